"""python -m llm.sweeps collect SWEEP_DIR | status SWEEP_DIR [--plot PNG]"""

import argparse
import sys
from pathlib import Path

from llm.sweeps.collect import collect, write_results
from llm.sweeps.status import plot_losses, status_table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.sweeps", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    collect_parser = commands.add_parser("collect", help="write results.csv and results.parquet into the sweep")
    collect_parser.add_argument("sweep_dir", type=Path)
    status_parser = commands.add_parser("status", help="a table of the sweep's runs, with progress and ETA")
    status_parser.add_argument("sweep_dir", type=Path)
    status_parser.add_argument("--plot", type=Path, help="also plot every run's loss curves into this image")
    args = parser.parse_args()
    try:
        if args.command == "collect":
            table = collect(args.sweep_dir)
            csv, parquet = write_results(table, args.sweep_dir)
            print(table.drop(columns=["run_dir"]).to_string(index=False))
            print(f"wrote {csv} and {parquet} ({len(table)} runs)")
        else:
            print(status_table(args.sweep_dir))
            if args.plot:
                print(f"wrote {plot_losses(args.sweep_dir, args.plot)}")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
