"""The report card: DIR/report.md and its figures in DIR/report/, drawn from a run's stage chain.

A headline table (one column per stage), the system and git state and the cost of each stage, the
tokenizer, the base model's bpb and CORE, each stage's curves and final metrics, the ChatCORE
table, and sample conversations generated from each chat stage's newest checkpoint. Everything
comes from the run directories (so a Slurm run on shared storage renders anywhere, and again on
demand); the report's own files are written atomically and nothing else is touched.
"""

import time
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import OmegaConf

from llm.config import CONF_DIR
from llm.data.corpus import corpus_dir
from llm.data.fineweb import fineweb_dir
from llm.data.paths import base_dir
from llm.data.shards import list_shards
from llm.data.tokenizer import Tokenizer
from llm.report.chain import CHAT_STAGES, Stage, stage_chain
from llm.report.conversations import sample_conversations
from llm.report.plots import chat_bars, curves, numeric_series
from llm.train.checkpoint import CheckpointError
from llm.train.rundir import TOKENIZER_DIR, git_commit, write_atomic

REPORT_FILE = "report.md"
FIGURES_DIR = "report"


def number(value, digits: int = 4) -> str:
    """A table cell: '—' for missing, SI-suffixed large counts, `digits` decimals for fractions."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if abs(value) >= 1e3:
        for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{suffix}"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def duration(seconds) -> str:
    if seconds is None:
        return "—"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def last(stage: Stage, key: str):
    values = numeric_series(stage.metrics).get(key, ([], []))[1]
    return values[-1] if values else None


def chat_score(stage: Stage):
    chat = stage.evaluation.get("chat") or {}
    return chat.get("score") if chat else stage.summary.get("chat_score", last(stage, "chat_score"))


def headline(chain: list[Stage]) -> list[str]:
    def row(label, value):
        return [label, *(value(stage) for stage in chain)]

    core = lambda s: (s.evaluation.get("core") or {}).get("score", s.summary.get("core_score"))  # noqa: E731
    rows = [row("status", lambda s: s.summary.get("status", "—")),
            row("steps", lambda s: f"{s.summary.get('step', '—')} / {s.summary.get('num_iterations', '—')}"),
            row("parameters", lambda s: number((s.summary.get("params") or {}).get("total"))),
            row("tokens trained", lambda s: number(s.summary.get("tokens_trained"))),
            row("train loss", lambda s: number(s.summary.get("train_loss", last(s, "loss")))),
            row("val bpb", lambda s: number((s.evaluation.get("bpb") or {}).get("val", s.summary.get("val_bpb")))),
            row("CORE", lambda s: number(core(s))),
            row("ChatCORE", lambda s: number(chat_score(s))),
            row("reward (last)", lambda s: number(last(s, "reward"))),
            row("wall clock", lambda s: duration(s.summary.get("train_time_sec"))),
            row("FLOPs", lambda s: number(s.summary.get("total_flops")))]
    return table(["", *(stage.name for stage in chain)], rows)


def system_and_cost(chain: list[Stage]) -> list[str]:
    rows = []
    for stage in chain:
        hosts = sorted({launch.get("host", "?") for launch in stage.launches})
        jobs = sorted({launch["slurm_job"] for launch in stage.launches if "slurm_job" in launch})
        rows.append([stage.name, f"`{stage.identity.get('git_commit', 'unknown')[:12]}`",
                     stage.identity.get("compute_dtype", "—"), stage.summary.get("device", "—"),
                     stage.summary.get("world_size", "—"), ", ".join(hosts) or "—", len(stage.launches),
                     ", ".join(jobs) or "—"])
    lines = ["## System and git", "", *table(["stage", "commit", "dtype", "device", "world size", "hosts",
                                              "launches", "Slurm jobs"], rows)]
    cost = [[s.name, duration(s.summary.get("train_time_sec")), number(s.summary.get("total_flops")),
             number(s.summary.get("tokens_trained")), number(s.summary.get("flops_per_token"))] for s in chain]
    total_time = sum(s.summary.get("train_time_sec") or 0 for s in chain)
    total_flops = sum(s.summary.get("total_flops") or 0 for s in chain)
    cost.append(["**total**", f"**{duration(total_time)}**", f"**{number(float(total_flops))}**", "", ""])
    return lines + ["## Cost", "", *table(["stage", "wall clock", "FLOPs", "tokens", "FLOPs/token"], cost)]


def _validation_text(stage: Stage, chars: int) -> str | None:
    """Up to `chars` characters of the run's validation shard, when its corpus is on this machine."""
    config = OmegaConf.load(stage.path / "config.yaml") if (stage.path / "config.yaml").is_file() else None
    if config is None or "data" not in config:
        return None
    base = base_dir(config.get("base_dir"))
    name = config.data.get("name")
    directory = {"embedded": lambda: corpus_dir(base), "fineweb_edu": lambda: fineweb_dir(base),
                 "parquet": lambda: Path(str(config.data.get("path"))).expanduser()}.get(name)
    try:
        shard = list_shards(directory())[-1]
        texts, total = [], 0
        for text in pq.read_table(shard, columns=[config.data.get("text_column", "text")]).column(0).to_pylist():
            texts.append(text)
            total += len(text)
            if total >= chars:
                break
        return "".join(texts)[:chars]
    except (TypeError, FileNotFoundError, ValueError, KeyError, OSError):
        return None  # no corpus here: the report says so rather than failing


def tokenizer_facts(base: Stage, chars: int) -> list[str]:
    lines = ["## Tokenizer", ""]
    if not (base.path / TOKENIZER_DIR).is_dir():
        return lines + [f"{base.path / TOKENIZER_DIR} is missing.", ""]
    tokenizer = Tokenizer.load(base.path / TOKENIZER_DIR)
    rows = [["vocabulary size", f"{tokenizer.vocab_size:,}"]]
    text = _validation_text(base, chars)
    if text:
        ids = tokenizer.encode(text)
        size = len(text.encode("utf-8"))
        rows += [["sample (validation shard)", f"{len(text):,} characters, {size:,} bytes"],
                 ["tokens", f"{len(ids):,}"], ["compression (bytes per token)", f"{size / len(ids):.3f}"]]
    else:
        rows.append(["compression", "the run's corpus is not on this machine"])
    return lines + table(["", ""], rows)


def figure(stage: Stage, out: Path) -> list[str]:
    path = out / f"{stage.stage}_{stage.path.name}.png"
    if not curves(stage.metrics, stage.name, path):
        return ["No metrics logged.", ""]
    return [f"![{stage.name} curves]({FIGURES_DIR}/{path.name})", ""]


def final_metrics(stage: Stage) -> list[str]:
    series = numeric_series(stage.metrics)
    rows = [[key, number(values[-1]), number(min(values)), number(max(values)), len(values)]
            for key, (_, values) in series.items()]
    return table(["metric", "last", "min", "max", "points"], rows) if rows else []


def base_section(base: Stage, out: Path) -> list[str]:
    lines = [f"## Base model: {base.path.name}", "", *figure(base, out), *final_metrics(base)]
    bpb, core = base.evaluation.get("bpb"), base.evaluation.get("core")
    if bpb:
        lines += [f"Evaluated at step {base.evaluation.get('checkpoint_step', '—')}: "
                  f"bpb train **{bpb['train']:.4f}**, val **{bpb['val']:.4f}**.", ""]
    if core:
        rows = [[label, number(task["accuracy"]), number(task["centered"])] for label, task in core["tasks"].items()]
        rows.append(["**CORE**", "", f"**{number(core['score'])}**"])
        lines += [f"CORE on `{Path(str(core.get('bundle', ''))).name}`:", "",
                  *table(["task", "accuracy", "centered"], rows)]
    if not base.evaluation:
        lines += [f"Not evaluated: `python -m llm.evaluate run_dir={base.path}` writes eval.json.", ""]
    for text in (base.evaluation.get("samples") or {}).get("conditioned", [])[:4]:
        lines += ["```", text.strip(), "```", ""]
    return lines


def chatcore_table(chain: list[Stage], out: Path) -> list[str]:
    evaluated = [s for s in chain if s.evaluation.get("chat")]
    if not evaluated:
        return []
    names = list(dict.fromkeys(name for s in evaluated for name in s.evaluation["chat"]["tasks"]))

    def cell(stage, name):
        task = stage.evaluation["chat"]["tasks"].get(name)
        return "—" if task is None else f"{number(task['accuracy'])} (n={task.get('n', '?')})"

    rows = [[name, *(cell(s, name) for s in evaluated)] for name in names]
    rows.append(["**ChatCORE**", *(f"**{number(s.evaluation['chat'].get('score'))}**" for s in evaluated)])
    suite = evaluated[-1].evaluation["chat"].get("name") or evaluated[-1].evaluation["chat"].get("suite", "")
    chat_bars({s.name: {name: task["accuracy"] for name, task in s.evaluation["chat"]["tasks"].items()}
               for s in evaluated}, out / "chatcore.png")
    return ["## ChatCORE", "", f"Suite `{suite}`: accuracy per task (problems scored).", "",
            *table(["task", *(s.name for s in evaluated)], rows), f"![chat tasks by stage]({FIGURES_DIR}/chatcore.png)", ""]


def conversations_section(chain: list[Stage], settings) -> list[str]:
    lines = ["## Sample conversations", "",
             f"Greedy, seed {settings.seed}, at most {settings.sample_tokens} tokens per reply, from each "
             "chat stage's newest checkpoint.", ""]
    chat_stages = [s for s in chain if s.stage in CHAT_STAGES and (s.path / "checkpoints").is_dir()]
    for stage in chat_stages:
        lines += [f"### {stage.name}", ""]
        try:
            talks = sample_conversations(stage.path, list(settings.sample_prompts), settings.sample_tokens,
                                         settings.seed)
        except (CheckpointError, FileNotFoundError) as error:  # the rest of the report is still worth having
            lines += [f"No samples: {str(error).splitlines()[0]}", ""]
            continue
        for talk in talks:
            reply = (talk["reply"] or "(empty)").splitlines()
            lines += [f"> **user:** {talk['prompt']}", ">", f"> **assistant:** {reply[0]}",
                      *(f"> {line}" for line in reply[1:]), ""]
    return lines if chat_stages else []


def render(path: str | Path) -> Path:
    """Write DIR/report.md and DIR/report/*.png for the run at `path`; returns the report's path."""
    chain = stage_chain(path)
    settings = OmegaConf.load(CONF_DIR / "report.yaml")
    newest = chain[-1]
    out = newest.path / FIGURES_DIR
    out.mkdir(exist_ok=True)
    run_name = newest.summary.get("run_name") or newest.path.name
    lines = [f"# Report card: {run_name}", "",
             " → ".join(f"**{s.stage}** `{s.path}`" for s in chain), "",
             f"Rendered {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by commit `{git_commit()[:12]}` from the run "
             "directories alone.", "", *headline(chain), *system_and_cost(chain),
             *tokenizer_facts(chain[0], settings.compression_chars), *base_section(chain[0], out)]
    for stage in chain[1:]:
        lines += [f"## {stage.stage.upper()}: {stage.path.name}", "",
                  f"From {stage.parent['run_dir']} at step {stage.parent.get('checkpoint_step', '—')}.", "",
                  *figure(stage, out), *final_metrics(stage)]
    lines += [*chatcore_table(chain, out), *conversations_section(chain, settings)]
    report = newest.path / REPORT_FILE
    write_atomic(report, "\n".join(lines).rstrip() + "\n")
    return report
