"""What a person watching a run sees: a banner with the plan, then one line per step with ETA."""

import math

from omegaconf import DictConfig

from llm.config.derived import Plan


class Progress:
    def __init__(self, plan: Plan, runtime, peak_flops_per_device: float | None):
        self.plan = plan
        finite = peak_flops_per_device is not None and math.isfinite(peak_flops_per_device)
        self.peak = peak_flops_per_device * runtime.world_size if finite else None
        self.first_step_sec: float | None = None  # compile and warm-up land here; kept out of the ETA

    def banner(self, cfg: DictConfig) -> str:
        return (f"{self.plan.report()}\noptim {cfg.optim.name} | dataloader {cfg.dataloader.name} | "
                f"attention {cfg.attention.backend} | {cfg.run_name}")

    def step(self, step: int, loss: float, lrm: float, dt: float, epoch: int, train_time: float) -> tuple[str, dict]:
        """The progress line for a finished step, and the metrics record it contributes."""
        n = self.plan.num_iterations
        if self.first_step_sec is None:
            self.first_step_sec = dt
        tok_per_sec = self.plan.total_batch_size / dt
        mfu = 100 * self.plan.flops_per_token * tok_per_sec / self.peak if self.peak else None
        steady = (train_time - self.first_step_sec) / (step - 1) if step > 1 else dt
        eta = steady * (n - step)
        line = (f"step {step:05d}/{n:05d} ({100 * step / n:5.1f}%) | loss {loss:.4f} | lrm {lrm:.2f} | "
                f"dt {dt * 1000:.0f}ms | tok/s {tok_per_sec:,.0f} | mfu {'-' if mfu is None else f'{mfu:.1f}%'} | "
                f"epoch {epoch} | elapsed {train_time / 60:.1f}m | eta {eta / 60:.1f}m")
        metrics = {"loss": loss, "lrm": lrm, "dt": dt, "tok_per_sec": tok_per_sec, "mfu": mfu, "epoch": epoch,
                   "eta_sec": eta}
        return line, metrics
