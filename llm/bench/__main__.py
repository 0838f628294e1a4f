"""python -m llm.bench train [hydra overrides] [--steps N] [--warmup N] [--profile TABLE] [--json]
python -m llm.bench engine RUN_DIR | [hydra overrides] [--steps N] [--warmup N] [--json]
python -m llm.bench packer [hydra overrides] [--json]
python -m llm.bench serve RUN_DIR [--json]     a live server: tokens/s and time to first token at 1, 8, 32 streams
python -m llm.bench tokenizer [hydra overrides] [--json]
python -m llm.bench all [hydra overrides for every benchmark] [--steps N] [--warmup N] [--json]
python -m llm.bench gpu [hydra overrides for every benchmark] [--steps N] [--warmup N] [--json]
python -m llm.bench race [overrides on experiment=cpu] [--reference CHECKOUT [--reference-python PY]] [--json]

all and gpu run a suite (llm/bench/suite.py), each benchmark in its own process, and exit with
status 1 when any of them failed (its error is reported in its place)."""

import argparse
import json
import sys
from pathlib import Path

from llm.bench.engine import benchmark_engine
from llm.bench.packer import benchmark_packer
from llm.bench.race import print_race, race
from llm.bench.serve import benchmark_serve
from llm.bench.suite import SUITES, run_suite
from llm.bench.tokenizer import benchmark_tokenizer
from llm.bench.train_step import benchmark_train


def print_table(result: dict) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def run_one(kind: str, overrides: list[str], steps: int, warmup: int, profile: str | None = None) -> dict:
    if kind == "train":
        return benchmark_train(overrides, steps, warmup, profile)
    if kind == "packer":
        return benchmark_packer(overrides)
    if kind == "tokenizer":
        return benchmark_tokenizer(overrides)
    if kind == "serve":
        if len(overrides) != 1 or not Path(overrides[0]).is_dir():
            sys.exit("error: llm.bench serve takes one run directory: python -m llm.bench serve DIR")
        return benchmark_serve(overrides[0])
    is_run_dir = len(overrides) == 1 and Path(overrides[0]).is_dir()
    return benchmark_engine(overrides[0] if is_run_dir else overrides, steps, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["train", "engine", "packer", "tokenizer", "serve", "race", *SUITES])
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, as for train.py (e.g. experiment=cpu); for engine, or a run directory")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steady-state steps (engine: timed repetitions, the best one counts)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed warm-up steps, the first reported alone (compile happens there)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--save", metavar="PATH", help="also write the results to PATH as one JSON object")
    parser.add_argument("--reference", metavar="PATH",
                        help="race: also train the same shape with the nanochat checkout at PATH")
    parser.add_argument("--profile", metavar="TABLE",
                        help="train: profile the timed steps, torch.profiler's operator table to TABLE")
    parser.add_argument("--reference-python", metavar="PY",
                        help="race: the interpreter that runs the reference (default: this one)")
    args = parser.parse_args()
    if (args.reference or args.reference_python) and args.kind != "race":
        parser.error("--reference and --reference-python are options of race only")
    if args.profile and args.kind != "train":
        parser.error("--profile is an option of train only")
    if args.reference_python and not args.reference:
        parser.error("--reference-python needs --reference")
    if args.kind == "race":
        results = race(args.overrides, args.reference, args.reference_python)
        if not args.json:
            print_race(results)
    elif args.kind not in SUITES:
        results = run_one(args.kind, args.overrides, args.steps, args.warmup, args.profile)
        if not args.json:
            print_table(results)
    else:
        results = {}
        for name, result in run_suite(SUITES[args.kind], args.overrides, args.steps, args.warmup):
            results[name] = result
            if not args.json:
                print(f"\n== {name}")
                print_table(result)
    if args.json:
        print(json.dumps(results))
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=2) + "\n")
    failed = [name for name, result in results.items() if "error" in result] if args.kind in SUITES else []
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
