"""The training recipe: build, resume if there is a checkpoint, then step to the horizon.

    evaluate at step 0
    for each step: train, evaluate if due, record, save if due, stop if signalled

A checkpoint at step s holds everything after step s (weights, optimizer, data position, loop
state) and is written after step s's metrics are recorded, so resuming from it starts at step s+1
with nothing left over, and a run stopped and resumed produces exactly the losses and weights of
one that never stopped. Every periodic action follows llm.config.cadence; the checkpoint at the
last step and the one at a stop signal are always written.

Every stage runs this loop: pretraining, and the chat stages that start from a parent run
(`init_from`, llm.train.lineage) on their own data, with the chat evaluation on its cadence. A
stage plugs in its batches and the loss of one (build.Loaders): RL's batches are replies the model
samples and its loss the policy gradient (llm.train.rollouts), evaluated by pass@k.
"""

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from llm.config.cadence import is_due
from llm.config.derived import ConfigError
from llm.data.tokenizer import token_bytes
from llm.device import peak_flops, peak_memory_bytes
from llm.eval.bpb import evaluate_bpb
from llm.eval.chat import evaluate_chat, pass_at_k
from llm.eval.core import core_score
from llm.eval.sample import greedy_continuations
from llm.inference.engine import Engine
from llm.model import attention
from llm.optim.schedules import apply_schedules
from llm.train import build, checkpoint
from llm.train import runtime as runtimes
from llm.train.chat_data import ChatData
from llm.train.lineage import adopt_parent
from llm.train.preemption import StopSignal
from llm.train.progress import Progress
from llm.train.rundir import TOKENIZER_DIR, RunDir, Summary
from llm.train.step import train_step
from llm.train.tracking import Tracker


@dataclass
class LoopState:
    """What a resumed run restores besides weights, optimizer and data position: the state after `step`."""
    step: int = 0
    train_time_sec: float = 0.0
    train_loss: float | None = None
    val_bpb: float | None = None
    min_val_bpb: float | None = None
    core_score: float | None = None

    @classmethod
    def from_meta(cls, loop: dict) -> "LoopState":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in loop.items() if key in known})


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train cfg in run_dir (resuming what is there) and return its summary."""
    run = RunDir(run_dir)
    parent = adopt_parent(cfg)  # a later stage takes its parent's model shape
    config = OmegaConf.to_container(cfg, resolve=True)
    lineage = parent.record() if parent else None
    run.check_identity(config, lineage)  # every rank checks, so all refuse together
    finished = run.read_summary()
    if finished and finished["status"] == "done":
        print(f"{run.path} already finished at step {finished['step']}: nothing to do")
        return finished
    runtime = runtimes.start(cfg.device, cfg.dtype, cfg.seed, cfg.base_dir, run.recorded_dtype())
    stop = StopSignal()
    try:
        # A stage's conversations are read before anything is written: a bad mixture leaves no trace.
        chat = build.master_first(runtime, lambda: ChatData.of(cfg)) if parent else None
        if runtime.is_master:
            run.bind(config, OmegaConf.to_yaml(cfg, resolve=True), runtime.dtype_name, lineage)
            run.set_status("starting")  # building data and model; "running" once the loop starts
        summary = Trainer(cfg, build.build_run(cfg, runtime, parent=parent, chat=chat), run, stop).run()
    except BaseException:
        if runtime.is_master and run.read_summary() is not None:
            run.set_status("failed")  # the numbers stay those of the last step that was published
        raise
    finally:
        runtimes.stop(runtime)
    stop.hand_over()  # e.g. submitit requeues the job now that the checkpoint is safe
    return asdict(summary)


class Trainer:
    """One run's loop over its built components; `run` is the recipe, the other methods its steps."""

    def __init__(self, cfg: DictConfig, built: build.Run, run: RunDir, stop: StopSignal):
        self.cfg, self.built, self.run_dir, self.stop = cfg, built, run, stop
        self.runtime, self.plan, self.model = built.runtime, built.plan, built.model
        self.is_master = self.runtime.is_master
        self.say = print if self.is_master else (lambda *_: None)
        self.step_model = torch.compile(self.model, dynamic=False) if cfg.train.compile else self.model
        self.bytes_per_token = token_bytes(built.tokenizer).to(self.runtime.device)
        self.state = LoopState()
        if self.is_master and not (run.path / TOKENIZER_DIR).exists():
            built.tokenizer.save(run.path / TOKENIZER_DIR)  # the run directory stays usable without the data home

    def run(self) -> Summary:
        n = self.plan.num_iterations
        resumed = self.resume()
        self.start_reporting()
        try:
            if not resumed:
                self.record(self.evaluate())
            stopping = False
            while self.state.step < n and not stopping:
                metrics = self.train_one_step()
                metrics |= self.evaluate()
                self.record(metrics)
                stopping = self.stop.requested(self.runtime)
                if stopping or self.state.step == n or is_due(self.cfg.checkpoint.every, self.state.step, n):
                    self.save()
                self.publish("running")
        finally:
            self.tracker.finish()
        status = "done" if self.state.step == n else "preempted"
        self.publish(status)
        memory = "peak memory" if self.runtime.device.type == "cuda" else "peak RSS"
        self.say(f"{status} at step {self.state.step}: train loss {self.state.train_loss}, val bpb "
                 f"{self.state.val_bpb}, {self.state.train_time_sec / 60:.2f} min training, "
                 f"{memory} {peak_memory_bytes(self.runtime.device) / 2**20:.0f} MiB")
        return self.summary(status)

    def resume(self) -> bool:
        """Restore the newest checkpoint, if any, and forget metrics recorded after it."""
        path = checkpoint.latest(self.run_dir.checkpoints)
        if path is not None:
            model_state, optimizer_state, loader_state, meta = checkpoint.load(path, self.runtime)
            vocab = self.built.tokenizer.vocab_size
            if meta["vocab_size"] != vocab:
                raise ConfigError(f"{path} was trained with vocab {meta['vocab_size']} but the tokenizer has "
                                  f"{vocab}: use the data config it was trained with")
            self.model.load_state_dict(model_state)
            self.built.optimizer.load_state_dict(optimizer_state)
            self.built.loaders.train.load_state_dict(loader_state)
            self.state = LoopState.from_meta(meta["loop"])
            if self.is_master:
                self.run_dir.rewind_metrics(self.state.step)
            self.say(f"resuming from {path}: step {self.state.step} done, {self.state.step + 1} next")
        if self.is_master:
            self.run_dir.record_launch(self.state.step, self.runtime.world_size, self.runtime.dtype_name)
        return path is not None

    def start_reporting(self) -> None:
        cfg, runtime = self.cfg, self.runtime
        self.tracker = Tracker(cfg.wandb.mode, cfg.wandb.project, cfg.run_name, self.run_dir.path,
                               OmegaConf.to_container(cfg, resolve=True), enabled=self.is_master)
        # Only rank 0 shows MFU; measuring a CPU's peak takes about a second.
        peak, source = peak_flops(runtime.device, runtime.compute_dtype) if self.is_master else (None, None)
        losses = [r["loss"] for r in self.run_dir.read_metrics() if "loss" in r] if self.is_master else []
        self.progress = Progress(self.plan, runtime.world_size, peak, losses)
        backend = attention.active_backend()
        if backend == "sdpa" and cfg.attention.backend == "auto" and runtime.device.type != "cuda":
            backend += " (FA3 needs a CUDA device)"
        self.say(self.progress.banner(cfg, runtime.describe(), backend, source))
        self.publish("running")

    def train_one_step(self) -> dict:
        """Step state.step + 1: schedules, forward/backward, update. Returns its metrics."""
        start = time.perf_counter()
        lrm = apply_schedules(self.built.optimizer, self.state.step, self.plan.num_iterations, self.cfg.optim)
        loaders = self.built.loaders
        loss = train_step(self.step_model, self.built.optimizer, loaders.train, self.plan.grad_accum_steps,
                          self.runtime, loaders.objective)
        self.runtime.synchronize()
        dt = time.perf_counter() - start
        self.state.step += 1
        self.state.train_loss = loss
        self.state.train_time_sec += dt
        line, metrics = self.progress.step(self.state.step, loss, lrm, dt, loaders.train.epoch,
                                           self.state.train_time_sec)
        measured = loaders.step_metrics()  # RL: the mean reward and length of the step's replies
        log_every = self.cfg.train.log_every
        if log_every > 0 and (self.state.step % log_every == 0 or self.state.step == 1):
            self.say(line + "".join(f" | {key} {value:.4f}" for key, value in measured.items()))
        return metrics | measured

    def evaluate(self) -> dict:
        """What is due at state.step: val bpb, pass@k, CORE, chat tasks and samples (the last three never at
        step 0)."""
        step, n, evals = self.state.step, self.plan.num_iterations, self.cfg.eval
        metrics = {}
        if is_due(evals.every, step, n):
            self.state.val_bpb = metrics["val_bpb"] = self.val_bpb()
            self.state.min_val_bpb = min(self.state.val_bpb, self.state.min_val_bpb or math.inf)
            self.say(f"step {step:05d} | val bpb {self.state.val_bpb:.4f}")
        if step > 0 and is_due(evals.core_every, step, n):
            # The uncompiled model: every CORE example has its own shape.
            core = core_score(self.model, self.built.tokenizer, evals, self.runtime, self.built.base)
            self.state.core_score = metrics["core_score"] = core["score"]
            self.say(f"step {step:05d} | CORE {core['score']:.4f} ({core['bundle']})")
        if step > 0 and evals.chat is not None and is_due(evals.chat.every, step, n):
            metrics |= self.chat_accuracies()
        if evals.pass_at_k is not None and is_due(evals.pass_at_k.every, step, n):
            metrics |= self.pass_at_k()
        if step > 0 and self.is_master and is_due(evals.sample_every, step, n):
            self.print_samples()
        return metrics

    def chat_accuracies(self) -> dict:
        """eval.chat's tasks on the uncompiled model (prompts of every length): accuracy per task."""
        self.model.eval()
        report = evaluate_chat(self.model, self.built.tokenizer, self.cfg.eval, self.runtime, self.cfg.base_dir,
                               say=self.say)
        self.model.train()
        metrics = {f"chat/{name}": task["accuracy"] for name, task in report["tasks"].items()}
        return metrics | ({"chat_score": report["score"]} if "score" in report else {})

    def pass_at_k(self) -> dict:
        """RL's evaluation: pass@1..k on the held-out questions of its val task (the uncompiled model)."""
        self.model.eval()
        with self.runtime.autocast():
            scores = pass_at_k(Engine(self.model, self.built.tokenizer), self.built.tokenizer, self.built.chat.val,
                               self.cfg.eval.pass_at_k)
        self.model.train()
        self.say(f"step {self.state.step:05d} | " + ", ".join(f"{key} {value:.4f}" for key, value in scores.items()))
        return scores

    def val_bpb(self) -> float:
        """Validation bits per byte over eval.tokens tokens, always from the start of the val split."""
        cfg = self.cfg
        rows = cfg.train.device_batch_size * cfg.model.sequence_len * self.runtime.world_size
        self.step_model.eval()
        with self.runtime.autocast():
            bpb = evaluate_bpb(self.step_model, iter(self.built.loaders.val()), max(1, cfg.eval.tokens // rows),
                               self.bytes_per_token)
        self.step_model.train()
        return bpb

    def print_samples(self) -> None:
        self.model.eval()
        with self.runtime.autocast():
            for text in greedy_continuations(self.model, self.built.tokenizer, list(self.cfg.eval.sample_prompts),
                                             self.cfg.eval.sample_tokens):
                print(f"  sample: {text!r}")
        self.model.train()

    def record(self, metrics: dict) -> None:
        """Append state.step's metrics (if it has any) to metrics.jsonl and the tracker."""
        if self.is_master and metrics:
            record = {"step": self.state.step, **metrics}
            self.run_dir.append_metrics(record)
            self.tracker.log(record, self.state.step)

    def save(self) -> None:
        meta = {"loop": asdict(self.state), "vocab_size": self.plan.shape.vocab_size, "plan": self.plan.describe()}
        checkpoint.save(self.run_dir.checkpoints, self.state.step, self.runtime, self.model.state_dict(),
                        self.built.optimizer.state_dict(), self.built.loaders.train.state_dict(), meta,
                        self.cfg.checkpoint.keep)

    def summary(self, status: str) -> Summary:
        plan, state, tokens = self.plan, self.state, self.state.step * self.plan.total_batch_size
        return Summary(status=status, step=state.step, num_iterations=plan.num_iterations,
                       train_loss=state.train_loss, val_bpb=state.val_bpb, min_val_bpb=state.min_val_bpb,
                       core_score=state.core_score, params=dict(plan.params), scaling_params=plan.scaling_params,
                       flops_per_token=plan.flops_per_token, tokens_trained=tokens,
                       total_flops=float(plan.flops_per_token) * tokens, train_time_sec=state.train_time_sec,
                       device=self.runtime.describe(), world_size=self.runtime.world_size,
                       run_name=self.cfg.run_name, plan=plan.describe())

    def publish(self, status: str) -> None:
        if self.is_master:
            self.run_dir.write_summary(self.summary(status))
