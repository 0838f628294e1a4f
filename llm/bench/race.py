"""A race: this project's CPU preset against the reference's training of the same shape, same corpus.

`python -m llm.bench race [overrides] [--reference PATH]` trains `experiment=cpu` (plus any
overrides) with train.py in a scratch directory and, given PATH (a nanochat checkout, never vendored
or downloaded here), runs that checkout's `scripts.base_train` at the same shape, batch, horizon and
evaluation cadence on the same parquet shards, with a tokenizer of the same vocabulary trained by
its own `scripts.tok_train` on the same characters. The reference runs under --reference-python
(default: this interpreter), which must import its dependencies (HF `tokenizers` among them, which
this project does not need). Both use all of this machine's threads.

Measured the same way for both: wall time of the training command (data and tokenizer prepared
beforehand, untimed), training time = the sum of the step times (evaluation excluded, compilation
in the first step included), tokens/s = the median over steps of one step's tokens / its time, and
the last validation bpb. The reference never autocasts on a CPU; this project's dtype=auto picks bf16
where bf16 matmuls are fast, so the dtype is part of the table.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm.config import compose_run, derived
from llm.data.paths import base_dir

REPO = Path(__file__).resolve().parents[2]
# CORE off as in the reference's CPU run (it has no offline bundle); both still sample and evaluate bpb.
PRESET = ["experiment=cpu", "wandb.mode=disabled", "eval.core_every=-1"]
# base_train's progress line and validation line (nanochat 41bb2ea).
REFERENCE_STEP = re.compile(r"^step \d+/\d+ .*\| dt: ([\d.]+)ms \| tok/sec: ([\d,]+)")
REFERENCE_VAL = re.compile(r"Validation bpb: ([\d.]+)")


def prepare_data(cfg) -> Path:
    """The corpus shards and this project's tokenizer, built before anything is timed."""
    from llm.train import build  # imports torch: only once a race runs

    base = base_dir(cfg.base_dir)
    shards = build.corpus(cfg, base)
    build.tokenizer(cfg.data, shards, base)
    return shards


def timed(command: list[str], cwd: Path, log: Path, env: dict | None = None) -> float:
    """Run command, its output to log and to stderr as it comes; wall seconds. A failure exits naming the log."""
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            sink.write(line)
            sys.stderr.write(line)
    if process.wait() != 0:
        sys.exit(f"error: {' '.join(command[1:3])} failed with status {process.returncode}: see {log}")
    return time.perf_counter() - start


def race_this_project(overrides: list[str], scratch: Path, cfg) -> dict:
    run_dir = scratch / "llm"
    wall = timed([sys.executable, "train.py", *PRESET, *overrides, f"hydra.run.dir={run_dir}"], REPO,
                 scratch / "llm.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_rates = [r["tok_per_sec"] for r in records if "tok_per_sec" in r]
    return {"run": "llm", "dtype": summary["device"].rsplit(", ", 1)[-1], "wall_sec": wall,
            "train_sec": summary["train_time_sec"], "tokens_per_sec": statistics.median(step_rates),
            "val_bpb": summary["val_bpb"], "steps": summary["step"]}


def reference_arguments(cfg) -> list[str]:
    """base_train's flags for the shape, batch, horizon and evaluation cadence cfg trains."""
    plan = derived.plan(cfg)
    shape, evals = plan.shape, cfg.eval

    def cadence(every: int) -> int:
        # The reference's cadences also fire at the last step; it has no "only at the end" (0): every N = all.
        return {0: plan.num_iterations, -1: -1}.get(every, every)

    return [f"--depth={shape.depth}", f"--aspect-ratio={cfg.model.aspect_ratio}", f"--head-dim={shape.head_dim}",
            f"--window-pattern={shape.window_pattern}", f"--max-seq-len={shape.sequence_len}",
            f"--device-batch-size={cfg.train.device_batch_size}", f"--total-batch-size={plan.total_batch_size}",
            f"--num-iterations={plan.num_iterations}", f"--eval-every={cadence(evals.every)}",
            f"--eval-tokens={evals.tokens}", "--core-metric-every=-1", f"--sample-every={cadence(evals.sample_every)}",
            "--device-type=cpu", "--run=dummy"]


def race_reference(checkout: Path, python: str, cfg, shards: Path, scratch: Path) -> dict:
    home = scratch / "nanochat"
    (home / "base_data").mkdir(parents=True)
    for shard in sorted(shards.glob("*.parquet")):  # its split is ours: the last shard is validation
        (home / "base_data" / shard.name).symlink_to(shard)
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(home), "PYTHONPATH": str(checkout), "WANDB_MODE": "disabled"}
    timed([python, "-m", "scripts.tok_train", f"--vocab-size={cfg.data.vocab_size}",
           f"--max-chars={cfg.data.tokenizer_max_chars}"], checkout, scratch / "reference_tokenizer.log", env)
    log = scratch / "reference.log"
    wall = timed([python, "-m", "scripts.base_train", *reference_arguments(cfg)], checkout, log, env)
    text = log.read_text()
    steps = [(float(dt) / 1000, int(rate.replace(",", ""))) for dt, rate in
             (m.groups() for m in map(REFERENCE_STEP.match, text.splitlines()) if m)]
    bpbs = REFERENCE_VAL.findall(text)
    if not steps or not bpbs:
        sys.exit(f"error: no step or validation lines in {log}: is {checkout} nanochat at 41bb2ea?")
    return {"run": f"reference ({checkout.name})", "dtype": "float32", "wall_sec": wall,
            "train_sec": sum(dt for dt, _ in steps), "tokens_per_sec": statistics.median(r for _, r in steps),
            "val_bpb": float(bpbs[-1]), "steps": len(steps)}


def race(overrides: list[str], reference: str | None, reference_python: str | None = None) -> list[dict]:
    checkout = Path(reference).resolve() if reference else None
    if checkout and not (checkout / "scripts" / "base_train.py").is_file():
        sys.exit(f"error: --reference {reference} has no scripts/base_train.py: pass a nanochat checkout")
    cfg = compose_run([*PRESET, *overrides])
    shards = prepare_data(cfg)
    scratch = Path(tempfile.mkdtemp(prefix="llm-race-"))  # kept: the runs' logs and outputs
    print(f"race: runs and logs in {scratch}", file=sys.stderr)
    rows = [race_this_project(overrides, scratch, cfg)]
    if checkout:
        rows.append(race_reference(checkout, reference_python or sys.executable, cfg, shards, scratch))
    return rows


def print_race(rows: list[dict]) -> None:
    header = f"{'run':<24} {'dtype':<9} {'steps':>5} {'wall s':>8} {'train s':>8} {'tokens/s':>9} {'val bpb':>8}"
    print(header)
    for row in rows:
        print(f"{row['run']:<24} {row['dtype']:<9} {row['steps']:>5} {row['wall_sec']:>8.1f} {row['train_sec']:>8.1f} "
              f"{row['tokens_per_sec']:>9,.0f} {row['val_bpb']:>8.4f}")
    if len(rows) == 2:
        ours, theirs = rows
        print(f"llm / reference: {theirs['wall_sec'] / ours['wall_sec']:.2f}x faster wall, "
              f"{ours['tokens_per_sec'] / theirs['tokens_per_sec']:.2f}x tokens/s")
