"""python -m llm.bench train [hydra overrides] [--steps N] [--warmup N] [--json]
python -m llm.bench engine RUN_DIR | [hydra overrides] [--steps N] [--warmup N] [--json]"""

import argparse
import json
from pathlib import Path

from llm.bench.engine import benchmark_engine
from llm.bench.train_step import benchmark_train


def print_table(result: dict) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.bench", description=__doc__)
    parser.add_argument("kind", choices=["train", "engine"])
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, as for train.py (e.g. experiment=cpu); for engine, or a run directory")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steady-state steps (engine: timed repetitions, the best one counts)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (compile happens here)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.kind == "train":
        result = benchmark_train(args.overrides, args.steps, args.warmup)
    else:
        is_run_dir = len(args.overrides) == 1 and Path(args.overrides[0]).is_dir()
        target = args.overrides[0] if is_run_dir else args.overrides
        result = benchmark_engine(target, args.steps, args.warmup)
    print(json.dumps(result) if args.json else print_table(result) or "")


if __name__ == "__main__":
    main()
