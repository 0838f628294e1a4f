"""The pretraining recipe: build, (resume), then step until the horizon, evaluating on the way.

Each pass of the loop first does what is due at `step` (evaluate, sample, checkpoint), then trains
one optimizer step. Checkpoints hold everything that decides what comes next (weights, optimizer,
dataloader position, loop state), so a run stopped at any checkpoint and resumed produces the same
losses and weights as one that never stopped.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from llm.analysis.hardware import peak_flops
from llm.config import derived
from llm.config.cadence import is_due
from llm.data.paths import base_dir
from llm.data.tokenizer import token_bytes
from llm.eval.bpb import evaluate_bpb
from llm.eval.core import core_score
from llm.eval.sample import greedy_continuations
from llm.optim.schedules import apply_schedules
from llm.train import build, checkpoint
from llm.train import runtime as runtimes
from llm.train.preemption import StopSignal
from llm.train.progress import Progress
from llm.train.inference import TOKENIZER_DIR
from llm.train.rundir import RunDir
from llm.train.step import train_step
from llm.train.tracking import Tracker


@dataclass
class LoopState:
    """Everything besides weights, optimizer and data position that a resumed run must restore."""
    step: int = 0
    smooth_loss: float = 0.0  # debiased EMA of the training loss, for display
    train_time_sec: float = 0.0
    val_bpb: float | None = None
    core_score: float | None = None
    min_val_bpb: float | None = None
    train_loss: float | None = None
    pending: dict = field(default_factory=dict)  # the metrics record of `step`, written once evals are in


def train(cfg: DictConfig, run_dir: Path) -> dict:
    runtime = runtimes.start(cfg.device, cfg.dtype, cfg.seed, cfg.base_dir)
    stop = StopSignal()
    try:
        summary = _train(cfg, RunDir(run_dir), runtime, stop)
    finally:
        runtimes.stop(runtime)
    stop.hand_over()  # e.g. submitit requeues the job now that the checkpoint is safe
    return summary


def _master_first(runtime: runtimes.Runtime, make: Callable):
    """Rank 0 builds shared files (corpus, tokenizer) before the other ranks read them."""
    if runtime.is_master:
        result = make()
    runtime.barrier()
    return result if runtime.is_master else make()


def _train(cfg: DictConfig, run: RunDir, runtime: runtimes.Runtime, stop: StopSignal) -> dict:
    say = print if runtime.is_master else (lambda *_: None)
    config = OmegaConf.to_container(cfg, resolve=True)
    run.check_identity(config)
    finished = run.read_summary()
    if finished and finished["status"] == "done":
        say(f"{run.path} already finished at step {finished['step']}: nothing to do")
        return finished
    if runtime.is_master:
        run.bind(config, OmegaConf.to_yaml(cfg, resolve=True))
        run.set_status("starting")  # building data and model; "running" from the first loop pass
    try:
        return _build_and_run(cfg, run, runtime, stop, config, say)
    except BaseException:
        if runtime.is_master:
            run.set_status("failed")  # the numbers stay those of the last step that was published
        raise


def _build_and_run(cfg: DictConfig, run: RunDir, runtime: runtimes.Runtime, stop: StopSignal, config: dict,
                   say: Callable) -> dict:
    base = base_dir(cfg.base_dir)
    corpus_dir = _master_first(runtime, lambda: build.corpus(cfg, base))
    tok = _master_first(runtime, lambda: build.tokenizer(cfg.data, corpus_dir, base))
    plan = derived.plan(cfg, runtime.world_size, tok.vocab_size)
    if runtime.is_master and not (run.path / TOKENIZER_DIR).exists():
        tok.save(run.path / TOKENIZER_DIR)  # the run directory stays usable without the data home
    model = build.model(plan.shape, cfg.attention, runtime)
    optimizer = build.optimizer(model, plan, cfg.optim, runtime)
    train_batches = build.loader(cfg, tok, corpus_dir, "train", runtime)
    bytes_per_token = token_bytes(tok).to(runtime.device)

    state = LoopState()
    resume_from = checkpoint.latest(run.checkpoints)
    if resume_from is not None:
        model_state, optimizer_state, loader_state, meta = checkpoint.load(resume_from, runtime)
        if meta["vocab_size"] != tok.vocab_size:
            raise derived.ConfigError(f"{resume_from} was trained with vocab {meta['vocab_size']} but the tokenizer "
                                      f"has {tok.vocab_size}: use the data config it was trained with")
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        train_batches.load_state_dict(loader_state)
        state = LoopState(**meta["loop"])
        if runtime.is_master:
            run.rewind_metrics(state.step - 1)
        say(f"resuming from {resume_from} (step {state.step})")
    resumed_at = state.step
    if runtime.is_master:
        run.record_launch(resumed_at, runtime.world_size, runtime.dtype_name)

    step_model = torch.compile(model, dynamic=False) if cfg.train.compile else model
    tracker = Tracker(cfg.wandb.mode, cfg.wandb.project, cfg.run_name, run.path, config,
                      enabled=runtime.is_master)
    # MFU against the accelerator's bf16 peak; CPUs have no table entry (the benchmark measures theirs).
    peak = peak_flops(torch.cuda.get_device_name(runtime.device)) if runtime.device.type == "cuda" else None
    progress = Progress(plan, runtime, peak)
    say(progress.banner(cfg))

    def summary(status: str) -> dict:
        tokens = state.step * plan.total_batch_size
        return {
            "status": status, "step": state.step, "num_iterations": plan.num_iterations,
            "train_loss": state.train_loss, "val_bpb": state.val_bpb, "min_val_bpb": state.min_val_bpb,
            "core_score": state.core_score,
            "params": plan.params, "scaling_params": plan.scaling_params,
            "flops_per_token": plan.flops_per_token, "tokens_trained": tokens,
            "total_flops": float(plan.flops_per_token) * tokens, "train_time_sec": state.train_time_sec,
            "device": runtime.describe(), "world_size": runtime.world_size, "run_name": cfg.run_name,
            "plan": plan.describe(),
        }

    def publish(status: str) -> None:
        if runtime.is_master:
            run.write_summary(summary(status))

    publish("running")
    try:
        while True:
            last = state.step == plan.num_iterations
            fresh = state.step != resumed_at or resume_from is None  # a resumed step was saved already
            if fresh and is_due(cfg.eval.every, state.step, plan.num_iterations):
                state.val_bpb = _evaluate(cfg, step_model, tok, corpus_dir, runtime, bytes_per_token)
                state.min_val_bpb = min(state.val_bpb, state.min_val_bpb or math.inf)
                state.pending["val_bpb"] = state.val_bpb
                say(f"step {state.step:05d} | val bpb {state.val_bpb:.4f}")
            if fresh and state.step > 0 and is_due(cfg.eval.core_every, state.step, plan.num_iterations):
                core = core_score(model, tok, cfg.eval, runtime, base)  # uncompiled: every example has its own shape
                state.core_score = state.pending["core_score"] = core["score"]
                say(f"step {state.step:05d} | CORE {core['score']:.4f} ({core['bundle']})")
            if fresh and runtime.is_master and state.step > 0 and is_due(cfg.eval.sample_every, state.step, plan.num_iterations):
                _print_samples(cfg, model, tok, runtime)
            preempted = stop.requested(runtime)
            if fresh and state.step > 0 and (last or preempted or is_due(cfg.checkpoint.every, state.step, plan.num_iterations)):
                _save(run, state, model, optimizer, train_batches, runtime, plan, cfg.checkpoint.keep)
            if runtime.is_master and state.pending:
                record = {"step": state.step, **state.pending}
                run.append_metrics(record)
                tracker.log(record, state.step)
            state.pending = {}
            publish("running")
            if last or preempted:
                break

            step_start = time.perf_counter()
            lrm = apply_schedules(optimizer, state.step, plan.num_iterations, cfg.optim)
            state.train_loss = train_step(step_model, optimizer, train_batches, plan.grad_accum_steps, runtime)
            runtime.synchronize()
            dt = time.perf_counter() - step_start

            state.step += 1
            state.train_time_sec += dt
            ema = 0.9
            state.smooth_loss = ema * state.smooth_loss + (1 - ema) * state.train_loss
            shown_loss = state.smooth_loss / (1 - ema ** state.step)
            line, metrics = progress.step(state.step, state.train_loss, lrm, dt, train_batches.epoch,
                                          state.train_time_sec)
            state.pending = metrics
            if cfg.train.log_every > 0 and (state.step % cfg.train.log_every == 0 or state.step == 1):
                say(f"{line} | smooth loss {shown_loss:.4f}")
    finally:
        tracker.finish()

    status = "done" if state.step == plan.num_iterations else "preempted"
    publish(status)
    say(f"{status} at step {state.step}: train loss {state.train_loss}, val bpb {state.val_bpb}, "
        f"{state.train_time_sec / 60:.2f} min training, peak memory {runtime.peak_memory_bytes() / 2**20:.0f} MiB")
    return summary(status)


def _evaluate(cfg, step_model, tok, corpus_dir, runtime, bytes_per_token) -> float:
    """Validation bits per byte over eval.tokens tokens, always from the start of the val split."""
    val_batches = iter(build.loader(cfg, tok, corpus_dir, "val", runtime))
    steps = max(1, cfg.eval.tokens // (cfg.train.device_batch_size * cfg.model.sequence_len * runtime.world_size))
    step_model.eval()
    with runtime.autocast():
        bpb = evaluate_bpb(step_model, val_batches, steps, bytes_per_token)
    step_model.train()
    return bpb


def _print_samples(cfg, model, tok, runtime) -> None:
    model.eval()
    with runtime.autocast():
        for text in greedy_continuations(model, tok, list(cfg.eval.sample_prompts), cfg.eval.sample_tokens):
            print(f"  sample: {text!r}")
    model.train()


def _save(run: RunDir, state: LoopState, model, optimizer, loader, runtime, plan, keep: int) -> None:
    meta = {"loop": asdict(state), "vocab_size": plan.shape.vocab_size, "plan": plan.describe()}
    checkpoint.save(run.checkpoints, state.step, runtime, model.state_dict(), optimizer.state_dict(),
                    loader.state_dict(), meta, keep)
