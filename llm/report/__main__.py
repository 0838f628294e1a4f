"""python -m llm.report DIR: write DIR/report.md (and DIR/report/*.png) for the run at DIR."""

import argparse

from llm.cli import exit_on
from llm.report.card import render
from llm.report.chain import ReportError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.report", description=__doc__)
    parser.add_argument("run_dir", help="a run directory; its parent links are followed back to the base run")
    args = parser.parse_args(argv)
    with exit_on(ReportError, prog="llm.report"):
        print(f"wrote {render(args.run_dir)}")


if __name__ == "__main__":
    main()
