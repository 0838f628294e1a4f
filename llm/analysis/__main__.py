"""Command line for the scaling-law analysis.

    python -m llm.analysis isoflop results.csv [more.csv ...] [--fallback raw_min] [--json] [--plot isoflop.png]
    python -m llm.analysis parametric results.csv [--fitter lbfgs|varpro] [--n-boot 100] [--json] [--plot frontier.png]
    python -m llm.analysis plan --flops 1e19 [--table results.csv] [--json]
    python -m llm.analysis plan --gpu-hours 24 --gpu H100 --mfu 0.4

Defaults read the sweep collector's columns: flops_budget, N = params_transformer +
params_lm_head (the kaplan convention), tokens_trained, val_bpb. Bad input prints one line
on stderr and exits with status 2.
"""

import argparse
import importlib
import json
import sys
import warnings

from llm.analysis.conventions import DEFAULT_PARAMS_CONVENTION, FLOPS_CONVENTIONS, PARAMS_CONVENTIONS
from llm.analysis.isoflop import FALLBACKS, fit_isoflop
from llm.analysis.parametric import CHINCHILLA_LAW, DEFAULT_FITTER, FITTERS, fit_parametric
from llm.analysis.planner import DEFAULT_TOTAL_BATCH_SIZE, flops_from_gpu_hours, plan_run
from llm.analysis.table import load_table

# Where `plan` finds a depth's N and training FLOPs per token: the config layer's exact counts,
# named rather than imported because llm.analysis depends on no other llm package.
PARAMS_FOR_DEPTH_HOOK = "llm.config.sizes:scaling_params_for_depth"
FLOPS_PER_TOKEN_HOOK = "llm.config.sizes:flops_per_token_for_depth"


def column_options(args) -> dict:
    """The column choices shared by both fits."""
    return {"params_col": args.params_col, "params_convention": args.params_convention,
            "tokens_col": args.tokens_col, "loss_col": args.loss_col}


def load_runs(tables: list[str], args):
    """The finished runs of `tables`, as the shared options select them."""
    return load_table(tables, loss_col=args.loss_col, status_col=args.status_col, drop_highest=args.drop_highest_loss)


def resolve_hook(option: str, spec: str):
    """Import `module:function`, a callable of the depth given on the command line as `option`."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot load {option} {spec!r} ({error}); expected module:function") from None
    if not callable(function):
        raise ValueError(f"{option} {spec!r} is not callable")
    return function


def size_hooks(args):
    """N and FLOPs-per-token functions of the depth. The default FLOPs count belongs to the default
    N's model, so a caller's own --params-for-depth gets 6N unless it names its FLOPs count too."""
    params_spec = args.params_for_depth or PARAMS_FOR_DEPTH_HOOK
    flops_spec = args.flops_per_token_for_depth or (None if args.params_for_depth else FLOPS_PER_TOKEN_HOOK)
    params_for_depth = resolve_hook("--params-for-depth", params_spec)
    flops_per_token_for_depth = resolve_hook("--flops-per-token-for-depth", flops_spec) if flops_spec else None
    return params_for_depth, flops_per_token_for_depth


def run_isoflop(args) -> dict:
    runs = load_runs(args.tables, args)
    fit = fit_isoflop(runs, flops_col=args.flops_col, flops_convention=args.flops_convention, fallback=args.fallback,
                      **column_options(args))
    if args.plot:
        from llm.analysis.plots import plot_isoflop

        plot_isoflop(fit, path=args.plot)
    if not args.json:
        columns = ["flops", "n_points", "params_opt", "tokens_opt", "ratio", "loss_opt", "interior"]
        print(fit.budgets[columns].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        if fit.params_law is not None:
            print(f"N_opt ∝ C^a with a = {fit.params_law.exponent:.4f}")
            print(f"D_opt ∝ C^b with b = {fit.tokens_law.exponent:.4f}")
            print(f"optimal D/N at C = {fit.reference_flops:.3g}: {fit.ratio_at_reference:.2f}")
        print(f"D/N across budgets: {fit.ratio_mean:.2f} ± {fit.ratio_std:.2f}")
        print(f"interior optima (a parabola vertex with sizes on both sides): "
              f"{int(fit.budgets['interior'].sum())} of {len(fit.budgets)} budgets")
    return fit.summary()


def run_parametric(args) -> dict:
    runs = load_runs(args.tables, args)
    fit = fit_parametric(runs, n_boot=args.n_boot, seed=args.seed, confidence=args.confidence, fitter=args.fitter,
                         **column_options(args))
    if args.plot:
        from llm.analysis.plots import plot_loss_frontier

        plot_loss_frontier(fit, path=args.plot)
    summary = fit.summary()
    if not args.json:
        print(f"L(N, D) = E + A / N^alpha + B / D^beta over {summary['n_points']} runs "
              f"({args.n_boot} bootstrap resamples, {args.confidence:.0%} intervals)")
        for name in ["E", "A", "B", "alpha", "beta", "a", "b", "G"]:
            interval = summary["ci"].get(name)
            bounds = f"  [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
            print(f"{name:>6} = {summary[name]:.4g}{bounds}")
    return summary


def run_plan(args) -> dict:
    if args.flops is not None:
        flops = args.flops
    elif args.gpu_hours is not None and args.gpu is not None:
        flops = flops_from_gpu_hours(args.gpu_hours, args.gpu, args.mfu)
    else:
        raise ValueError("give the budget as --flops C, or as --gpu-hours H with --gpu NAME")
    if args.table:
        runs = load_runs(args.table, args)
        law = fit_parametric(runs, n_boot=0, fitter=args.fitter, **column_options(args)).law
        law_source = "fitted to " + ", ".join(args.table)
    else:
        law, law_source = CHINCHILLA_LAW, "Chinchilla (Hoffmann et al. 2022) defaults"
    params_for_depth, flops_per_token_for_depth = size_hooks(args)
    plan = plan_run(flops, law, params_for_depth, flops_per_token_for_depth=flops_per_token_for_depth,
                    total_batch_size=args.total_batch_size)
    if not args.json:
        print(f"compute budget      {plan.flops:.3g} FLOPs")
        print(f"loss law            {law_source}")
        print(f"optimal N, D        {plan.params_opt:.3g} params, {plan.tokens_opt:.3g} tokens "
              f"(loss {plan.loss_opt:.4g})")
        print(f"closest model       d{plan.depth}: {plan.params:.3g} params, {plan.tokens:.3g} tokens "
              f"(D/N {plan.tokens / plan.params:.1f}, loss {plan.loss:.4g})")
        print(f"iterations          {plan.iterations} x {plan.total_batch_size} tokens")
        print(plan.command)
    return {**plan.summary(), "law": law.as_dict(), "law_source": law_source}


def build_parser() -> argparse.ArgumentParser:
    columns = argparse.ArgumentParser(add_help=False)
    columns.add_argument("--params-col", help="column holding N (overrides --params-convention)")
    columns.add_argument("--params-convention", default=DEFAULT_PARAMS_CONVENTION, choices=list(PARAMS_CONVENTIONS),
                         help="how N is counted from the collector's params_* columns")
    columns.add_argument("--tokens-col", default="tokens_trained")
    columns.add_argument("--loss-col", default="val_bpb")
    columns.add_argument("--status-col", default="status", help="runs whose status is not 'done' are ignored")
    columns.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                         help="leave out the K runs of highest loss (outliers) before fitting")
    columns.add_argument("--fitter", default=DEFAULT_FITTER, choices=list(FITTERS),
                         help="Approach 3: lbfgs (all five constants jointly) or varpro (exponents searched, "
                              "E, A, B solved)")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(prog="python -m llm.analysis", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    isoflop = commands.add_parser("isoflop", parents=[columns, output], help="Chinchilla Approach 2")
    isoflop.add_argument("tables", nargs="+", help="results tables (.csv or .parquet)")
    isoflop.add_argument("--flops-col", default="flops_budget")
    isoflop.add_argument("--flops-convention", default="model", choices=FLOPS_CONVENTIONS,
                         help="model: read D off the runs; 6ND: D = C / (6 N)")
    isoflop.add_argument("--fallback", choices=[name for name in FALLBACKS if name],
                         help="raw_min: a budget without a parabola minimum in its sizes takes its best run "
                              "(default: such budgets are skipped)")
    isoflop.add_argument("--plot", help="save the IsoFLOP profiles to this PNG")
    isoflop.set_defaults(handler=run_isoflop)

    parametric = commands.add_parser("parametric", parents=[columns, output], help="Chinchilla Approach 3")
    parametric.add_argument("tables", nargs="+", help="results tables (.csv or .parquet)")
    parametric.add_argument("--n-boot", type=int, default=100, help="bootstrap resamples for the intervals")
    parametric.add_argument("--seed", type=int, default=0)
    parametric.add_argument("--confidence", type=float, default=0.95)
    parametric.add_argument("--plot", help="save the loss frontier to this PNG")
    parametric.set_defaults(handler=run_parametric)

    plan = commands.add_parser("plan", parents=[columns, output], help="recommend a run for a compute budget")
    plan.add_argument("--flops", type=float, help="compute budget in FLOPs")
    plan.add_argument("--gpu-hours", type=float, help="budget in GPU-hours (with --gpu and --mfu)")
    plan.add_argument("--gpu", help="accelerator name, e.g. H100 or 'NVIDIA A100-SXM4-80GB'")
    plan.add_argument("--mfu", type=float, default=0.4, help="expected model FLOPs utilisation")
    plan.add_argument("--table", nargs="+", help="fit the loss law to these tables instead of the defaults")
    plan.add_argument("--total-batch-size", type=int, default=DEFAULT_TOTAL_BATCH_SIZE)
    plan.add_argument("--params-for-depth", metavar="MODULE:FUNCTION",
                      help=f"function giving N for a depth, in the law's parameter convention "
                           f"(default {PARAMS_FOR_DEPTH_HOOK})")
    plan.add_argument("--flops-per-token-for-depth", metavar="MODULE:FUNCTION",
                      help=f"function giving a depth's training FLOPs per token (default {FLOPS_PER_TOKEN_HOOK} "
                           "with the default N, else 6N)")
    plan.set_defaults(handler=run_plan)
    return parser


def print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = print_warning
    try:
        summary = args.handler(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
