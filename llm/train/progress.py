"""What a person watching a run sees: a banner with the plan, then one line per step with ETA.

The loss shown beside each step's own is smoothed (a debiased exponential moving average), since
single-step losses are noisy. It is display only: a resumed run rebuilds it from the losses its
metrics already hold, so checkpoints carry nothing for it.
"""

from omegaconf import DictConfig

from llm.config.derived import Plan

SMOOTHING = 0.9


class Progress:
    def __init__(self, plan: Plan, world_size: int, peak_flops_per_device: float | None,
                 losses_so_far: list[float] = ()):
        self.plan = plan
        self.peak = peak_flops_per_device * world_size if peak_flops_per_device else None
        self.first_step_sec: float | None = None  # compile and warm-up land here; kept out of the ETA
        self.ema = 0.0
        self.losses_seen = 0
        for loss in losses_so_far:
            self._smooth(loss)

    def _smooth(self, loss: float) -> float:
        self.ema = SMOOTHING * self.ema + (1 - SMOOTHING) * loss
        self.losses_seen += 1
        return self.ema / (1 - SMOOTHING ** self.losses_seen)

    def banner(self, cfg: DictConfig, device: str, attention: str, peak_source: str | None) -> str:
        """The plan, then one line saying what runs: groups, device and dtype, attention backend, MFU's peak."""
        mfu = f"MFU against the {peak_source}" if peak_source else "no MFU"
        return (f"{self.plan.report()}\noptim {cfg.optim.name} | dataloader {cfg.dataloader.name} | "
                f"attention {attention} | {device} | {mfu} | {cfg.run_name}")

    def step(self, step: int, loss: float, lrm: float, dt: float, epoch: int, train_time: float) -> tuple[str, dict]:
        """The progress line for a finished step, and the metrics record it contributes."""
        n = self.plan.num_iterations
        if self.first_step_sec is None:
            self.first_step_sec = dt
        tok_per_sec = self.plan.total_batch_size / dt
        mfu = 100 * self.plan.flops_per_token * tok_per_sec / self.peak if self.peak else None
        steady = (train_time - self.first_step_sec) / (step - 1) if step > 1 else dt
        eta = steady * (n - step)
        smooth = self._smooth(loss)
        line = (f"step {step:05d}/{n:05d} ({100 * step / n:5.1f}%) | loss {loss:.4f} | smooth loss {smooth:.4f} | "
                f"lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_per_sec:,.0f} | "
                f"mfu {'-' if mfu is None else f'{mfu:.1f}%'} | epoch {epoch} | elapsed {train_time / 60:.1f}m | "
                f"eta {eta / 60:.1f}m")
        metrics = {"loss": loss, "lrm": lrm, "dt": dt, "tok_per_sec": tok_per_sec, "mfu": mfu, "epoch": epoch,
                   "eta_sec": eta}
        return line, metrics
