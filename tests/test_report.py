"""The report card (python -m llm.report): a real tiny base run, and mid/sft/rl children derived from
it by copying the directory and writing what those stages record (until the stages themselves land)."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llm.report.card import render
from llm.report.chain import ReportError, stage_chain

REPO = Path(__file__).resolve().parents[1]

CHAT_TABLES = {  # stage: {task: accuracy}, with the suite score
    "mid": ({"quiz_facts": 0.3125, "mmlu": 0.2500}, 0.0417),
    "sft": ({"quiz_facts": 0.4375, "mmlu": 0.2813}, 0.1389),
    "rl": ({"quiz_facts": 0.5000, "mmlu": 0.3125, "gsm_symbolic": 0.0625}, 0.2569),
}


def derive(parent: Path, child: Path, stage: str, metrics: list[dict]) -> Path:
    """A child run of `stage` from parent's newest checkpoint, as the lead's stages will write it."""
    shutil.copytree(parent, child)
    (child / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    identity = json.loads((child / "identity.json").read_text())
    step = json.loads((parent / "summary.json").read_text())["step"]
    identity.update(stage=stage, parent={"run_dir": str(parent.resolve()), "checkpoint_step": step})
    (child / "identity.json").write_text(json.dumps(identity))
    accuracies, score = CHAT_TABLES[stage]
    tasks = {name: {"accuracy": acc, "centered": acc, "n": 32} for name, acc in accuracies.items()}
    (child / "eval.json").write_text(json.dumps({"chat": {"score": score, "name": "chatcore_offline",
                                                          "tasks": tasks}}))
    summary = json.loads((child / "summary.json").read_text())
    summary.update(run_name=f"tiny_{stage}", train_time_sec=30.0 + len(metrics))
    (child / "summary.json").write_text(json.dumps(summary))
    return child


@pytest.fixture(scope="module")
def rl_chain(trained_run, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("chain")
    base = root / "base"
    shutil.copytree(trained_run, base)
    (base / "eval.json").write_text(json.dumps({
        "checkpoint_step": 12, "bpb": {"train": 3.1234, "val": 3.4567},
        "core": {"score": 0.0123, "bundle": "/x/eval_bundle_offline",
                 "tasks": {"hellaswag_zeroshot": {"accuracy": 0.2600, "centered": 0.0133}}},
        "samples": {"conditioned": ["def main():\n    return"], "unconditioned": []}}))
    mid = derive(base, root / "mid", "mid", [{"step": s, "loss": 4.0 - s / 10, "val_bpb": 2.0 - s / 100}
                                             for s in range(6)])
    sft = derive(mid, root / "sft", "sft", [{"step": s, "loss": 3.0 - s / 10, "chat_score": 0.1 + s / 100,
                                             "chat/mmlu": 0.25} for s in range(4)])
    rl = derive(sft, root / "rl", "rl", [{"step": s, "reward": 0.1 * s, "pass@1": 0.05 * s, "pass@8": 0.1 * s}
                                         for s in range(5)])
    return [base, mid, sft, rl]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_of_an_rl_run_covers_its_whole_chain(rl_chain):
    base, mid, sft, rl = rl_chain
    before = {path: digests(path) for path in rl_chain}
    report = render(rl)
    text = report.read_text()

    assert [s.stage for s in stage_chain(rl)] == ["base", "mid", "sft", "rl"]
    assert text.index(f"**base** `{base.resolve()}`") < text.index(f"**mid** `{mid.resolve()}`") \
        < text.index(f"**rl** `{rl.resolve()}`")
    # The base evaluation, the ChatCORE table with one column per chat stage, and the reward.
    assert "val **3.4567**" in text and "hellaswag_zeroshot | 0.2600 | 0.0133" in text
    chat = text[text.index("## ChatCORE"):]
    assert "| task | mid | sft | rl |" in chat
    assert "| quiz_facts | 0.3125 (n=32) | 0.4375 (n=32) | 0.5000 (n=32) |" in chat
    assert "| gsm_symbolic | — | — | 0.0625 (n=32) |" in chat
    assert "**0.2569**" in chat
    assert "| reward (last) | — | — | — | 0.4000 |" in text
    summary = json.loads((base / "summary.json").read_text())
    assert f"{summary['params']['total'] / 1e3:.2f}k" in text or f"{summary['params']['total'] / 1e6:.2f}M" in text
    # Tokenizer facts from the run's own tokenizer and corpus.
    assert "| vocabulary size |" in text and "compression (bytes per token)" in text
    # A sample conversation from each chat stage's checkpoint.
    for stage in ("mid", "sft", "rl"):
        assert f"### {stage}" in text
    assert text.count("> **user:** What is 12 times 7?") == 3
    # One valid PNG per stage, each linked from the report.
    figures = sorted((rl / "report").glob("*.png"))
    assert [p.name for p in figures] == ["base_base.png", "chatcore.png", "mid_mid.png", "rl_rl.png", "sft_sft.png"]
    for figure in figures:
        assert f"(report/{figure.name})" in text
        with Image.open(figure) as image:
            image.verify()
            assert image.format == "PNG"
    # Only the report's own files were written; re-rendering gives the same conversations.
    after = digests(rl)
    assert {k: v for k, v in after.items() if not (k == "report.md" or k.startswith("report/"))} == before[rl]
    for path in (base, mid, sft):
        assert digests(path) == before[path]
    again = render(rl).read_text()
    assert again[again.index("## Sample conversations"):] == text[text.index("## Sample conversations"):]


def test_a_broken_parent_link_is_one_line_and_exit_2(rl_chain, tmp_path):
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    identity = json.loads((rl_chain[1] / "identity.json").read_text())
    identity["parent"] = {"run_dir": str(tmp_path / "gone"), "checkpoint_step": 3}
    (orphan / "identity.json").write_text(json.dumps(identity))
    with pytest.raises(ReportError, match="not a run directory"):
        stage_chain(orphan)
    for bad in (orphan, tmp_path / "nothing"):
        result = subprocess.run([sys.executable, "-m", "llm.report", str(bad)], cwd=REPO, capture_output=True,
                                text=True)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("llm.report: error:")
    assert sorted(p.name for p in orphan.iterdir()) == ["identity.json"]


def test_a_base_run_alone_has_no_chat_sections(trained_run, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(trained_run, base)
    text = render(base).read_text()
    assert "| base |" in text.splitlines()[6] and "## Base model: base" in text
    assert "Not evaluated: `python -m llm.evaluate" in text
    assert "## ChatCORE" not in text and "## Sample conversations" not in text
    assert [p.name for p in (base / "report").iterdir()] == ["base_base.png"]


def test_a_parent_cycle_and_a_headless_chain_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for path, parent, stage in ((a, b, "sft"), (b, a, "mid")):
        path.mkdir()
        (path / "identity.json").write_text(json.dumps({"stage": stage, "parent": {"run_dir": str(parent)}}))
    with pytest.raises(ReportError, match="already in its chain"):
        stage_chain(a)
    (b / "identity.json").write_text(json.dumps({"stage": "mid", "parent": None}))
    with pytest.raises(ReportError, match="starts at .* a mid run with no parent"):
        stage_chain(a)
