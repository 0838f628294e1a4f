"""Evaluating a trained run's newest checkpoint into DIR/eval.json (the command is llm.evaluate).

It measures what the reference's base-model evaluation does: bits per byte on the train and val
splits of the run's own corpus (by default over as many tokens as the run's own eval.tokens, from
the start of each split, so val matches the run's last val bpb), greedy samples of the eval
prompts and unconditioned samples, and CORE on the chosen bundle. eval.json holds
    checkpoint_step, checkpoint, bpb {train, val}, core {score, tasks {label: {accuracy, centered}},
    bundle, max_per_task}, samples {conditioned, unconditioned}
and is written atomically; the checkpoints and the run's other files are only read. With
eval=chat it measures the chat tasks instead (llm/eval/chat.py) and sets eval.json's `chat`,
keeping what an earlier evaluation wrote there.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm.config.derived import ConfigError, model_shape
from llm.config.schema import RunConfig
from llm.data.paths import base_dir
from llm.data.tokenizer import token_bytes
from llm.eval.bpb import evaluate_bpb
from llm.eval.bundle import load_bundle
from llm.eval.chat import evaluate_chat
from llm.eval.core import evaluate_core, locate_bundle
from llm.eval.sample import greedy_continuations, sampled_continuations
from llm.train import build, checkpoint
from llm.train import runtime as runtimes
from llm.train.checkpoint import CheckpointError
from llm.train.load import load_model
from llm.train.rundir import write_atomic

RESULT_FILE = "eval.json"


def run_directory(configured: str | None) -> tuple[Path, DictConfig]:
    """The run directory and its train config, read through today's schema.

    A run trained before a key was added still evaluates: the key takes its schema default.
    """
    if not configured:
        raise ConfigError("run_dir is required: python -m llm.evaluate run_dir=DIR (a directory written by train.py)")
    path = Path(configured).expanduser()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} has no config.yaml: run_dir must be a run directory written by train.py")
    try:
        return path, OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path / "config.yaml"))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path / 'config.yaml'} does not fit this code's config schema "
                          f"({str(error).splitlines()[0]}): evaluate it with the code that trained it") from None


def load_checkpoint(run_dir: Path, run_cfg: DictConfig, device: torch.device):
    """(model, tokenizer, checkpoint dir, step) of the newest checkpoint, which must fit the run's config."""
    ckpt = checkpoint.resolve(run_dir)
    try:
        model, tokenizer, meta = load_model(ckpt, device)
    except (RuntimeError, KeyError) as error:  # weights that do not fit the shape their meta.json records
        raise CheckpointError(f"{ckpt} cannot be loaded ({str(error).splitlines()[0]}): "
                              "evaluate an intact run directory") from None
    # A checkpoint of another model must not be scored as this run.
    shape, configured = asdict(checkpoint.shape_of(meta)), asdict(model_shape(run_cfg.model, tokenizer.vocab_size))
    differing = [key for key in shape if shape[key] != configured[key]]
    if differing:
        key = differing[0]
        raise CheckpointError(f"{ckpt} has {key} {shape[key]} but {run_dir / 'config.yaml'} describes "
                              f"{key} {configured[key]}: the checkpoint belongs to another run")
    return model, tokenizer, ckpt, meta["step"]


def bits_per_byte(run_cfg: DictConfig, model, tokenizer, base: Path, tokens: int, runtime) -> dict:
    """{split: bpb} on the run's own corpus, batched as the run batched its evaluation."""
    corpus = build.corpus(run_cfg, base)
    tokens_per_step = run_cfg.train.device_batch_size * run_cfg.model.sequence_len * runtime.world_size
    steps = max(1, tokens // tokens_per_step)
    weights = token_bytes(tokenizer).to(runtime.device)
    result = {}
    for split in ("train", "val"):
        batches = iter(build.loader(run_cfg, tokenizer, corpus, split, runtime))
        with runtime.autocast():
            result[split] = evaluate_bpb(model, batches, steps, weights)
    return result


def samples(cfg: DictConfig, model, tokenizer, runtime) -> dict:
    with runtime.autocast():
        conditioned = greedy_continuations(model, tokenizer, list(cfg.eval.sample_prompts), cfg.eval.sample_tokens)
        unconditioned = sampled_continuations(model, tokenizer, "", cfg.unconditioned_samples,
                                              cfg.unconditioned_tokens, cfg.temperature,
                                              cfg.seed) if cfg.unconditioned_samples > 0 else []
    return {"conditioned": conditioned, "unconditioned": unconditioned}


def table(report: dict) -> str:
    core = report["core"]
    lines = [f"checkpoint   {report['checkpoint']} (step {report['checkpoint_step']})",
             f"bpb          train {report['bpb']['train']:.4f}   val {report['bpb']['val']:.4f}",
             f"CORE bundle  {core['bundle']}",
             f"  {'task':<40} {'accuracy':>9} {'centered':>9}"]
    lines += [f"  {label:<40} {task['accuracy']:>9.4f} {task['centered']:>9.4f}" for label, task in core["tasks"].items()]
    lines.append(f"  {'CORE':<40} {'':>9} {core['score']:>9.4f}")
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict, say) -> None:
    write_atomic(run_dir / RESULT_FILE, json.dumps(report, indent=2) + "\n")
    say(f"wrote {run_dir / RESULT_FILE}")


def evaluate(cfg: DictConfig) -> dict | None:
    """Measure cfg.run_dir's newest checkpoint; rank 0 writes and returns the report (others return None)."""
    run_dir, run_cfg = run_directory(cfg.run_dir)
    runtime = runtimes.start(cfg.device, cfg.dtype, cfg.seed)
    try:
        say = print if runtime.is_master else (lambda *_: None)
        model, tokenizer, ckpt, step = load_checkpoint(run_dir, run_cfg, runtime.device)
        base = base_dir(cfg.base_dir or run_cfg.get("base_dir"))
        if cfg.eval.chat is not None:
            chat = evaluate_chat(model, tokenizer, cfg.eval, runtime, str(base), say=say)
            if not runtime.is_master:
                return None
            earlier = json.loads((run_dir / RESULT_FILE).read_text()) if (run_dir / RESULT_FILE).exists() else {}
            report = {**earlier, "chat": {**chat, "checkpoint_step": step, "checkpoint": str(ckpt)}}
            write_report(run_dir, report, say)
            return report
        bundle = locate_bundle(cfg.eval.bundle, base)
        tasks = load_bundle(bundle)  # before the long measurements, so that a bad bundle fails at once

        bpb = bits_per_byte(run_cfg, model, tokenizer, base, cfg.split_tokens or run_cfg.eval.tokens, runtime)
        say(f"bpb: train {bpb['train']:.4f} | val {bpb['val']:.4f}")
        with runtime.autocast():
            core = evaluate_core(model, tokenizer, tasks, cfg.eval.core_max_per_task, model.config.sequence_len,
                                 runtime.device, say=say)
        if not runtime.is_master:
            return None
        report = {"checkpoint_step": step, "checkpoint": str(ckpt), "bpb": bpb,
                  "core": {**core, "bundle": str(bundle), "max_per_task": cfg.eval.core_max_per_task},
                  "samples": samples(cfg, model, tokenizer, runtime)}
        for kind, texts in report["samples"].items():
            say("\n".join(f"{kind} sample: {text!r}" for text in texts))
        say(table(report))
        write_report(run_dir, report, say)
        return report
    finally:
        runtimes.stop(runtime)
