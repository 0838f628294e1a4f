"""The chat stages as train.py runs them: mid and SFT from a parent run, exact resume, bad input.

The parent is the session's tiny trained base run. The stages run on the offline mixtures without
the two tasks whose data is a wheel in the real data home (gsm_symbolic, mmlu), for a few steps.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_RUN, run_train

WITHOUT_WHEELS = ["~stage.mixture.train.gsm_symbolic", "~stage.mixture.val.gsm_symbolic", "~stage.mixture.val.mmlu"]
MID = [*TINY_RUN, "stage=mid", "budget=iterations", "budget.num_iterations=4", "eval.every=2", *WITHOUT_WHEELS]
SFT = [*TINY_RUN, "stage=sft", "budget=iterations", "budget.num_iterations=6", "stage.examples_per_step=8",
       "eval.every=3", "checkpoint.every=2", "checkpoint.keep=10", "~stage.mixture.train.gsm_symbolic",
       "eval.chat.tasks=[quiz_facts]", "eval.chat.max_problems=4"]


def files_of(directory: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*") if path.is_file()}


def weights(run_dir: Path) -> dict:
    return torch.load(sorted((run_dir / "checkpoints").glob("step_*"))[-1] / "model.pt")


@pytest.fixture(scope="module")
def mid_run(tmp_path_factory, trained_run, llm_home) -> Path:
    run = tmp_path_factory.mktemp("mid") / "run"
    run_train(run, *MID, f"init_from={trained_run}", home=llm_home)
    return run


@pytest.mark.slow
def test_mid_then_sft_make_a_chain_of_complete_run_directories(mid_run, trained_run, tmp_path, llm_home):
    sft = tmp_path / "sft"
    run_train(sft, *SFT, f"init_from={mid_run}", home=llm_home)
    for run, stage, parent, parent_stage in ((mid_run, "mid", trained_run, "base"), (sft, "sft", mid_run, "mid")):
        identity = json.loads((run / "identity.json").read_text())
        assert identity["stage"] == stage
        assert identity["parent"] == {"run_dir": str(parent.resolve()), "stage": parent_stage,
                                      "checkpoint_step": json.loads((parent / "summary.json").read_text())["step"]}
        assert json.loads((run / "summary.json").read_text())["status"] == "done"
        assert (run / "tokenizer").is_dir() and (run / "config.yaml").is_file()
    metrics = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "val_bpb" in m] == [0, 3, 6]
    assert [m["step"] for m in metrics if "chat/quiz_facts" in m] == [6]  # eval.chat.every=200: at the end only
    # The model shape came from the parent: TINY_RUN's d2, whatever the stage's config said.
    assert (sft / "config.yaml").read_text().count("depth: 2") == 1
    result = subprocess.run([sys.executable, "-m", "llm.evaluate", f"run_dir={sft}", "eval=chat",
                             "eval.chat.tasks=[quiz_facts,spellingbee_wamerican]", "eval.chat.max_problems=3",
                             "eval.chat.max_new_tokens=8"], cwd=REPO, env={**os.environ, "LLM_HOME": str(llm_home)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    chat = json.loads((sft / "eval.json").read_text())["chat"]
    assert set(chat["tasks"]) == {"quiz_facts", "spellingbee_wamerican"} and chat["checkpoint_step"] == 6
    assert chat["tasks"]["quiz_facts"]["n"] == 3 and 0 <= chat["tasks"]["spellingbee_wamerican"]["ended"] <= 1


@pytest.mark.slow
def test_sft_killed_mid_run_resumes_exactly(mid_run, tmp_path, llm_home):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_train(straight, *SFT, f"init_from={mid_run}", home=llm_home)
    env = {**os.environ, "LLM_HOME": str(llm_home)}
    process = subprocess.Popen([sys.executable, "train.py", *SFT, f"init_from={mid_run}", f"hydra.run.dir={killed}"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "step_000002").exists():
        assert time.time() < deadline and process.poll() is None, "no checkpoint appeared"
        time.sleep(0.02)
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    assert json.loads((killed / "summary.json").read_text())["step"] < 6, "the kill came too late"
    run_train(killed, *SFT, f"init_from={mid_run}", home=llm_home)
    losses = lambda run: [(m["step"], m.get("loss"), m.get("val_bpb")) for m in
                          map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]
    assert losses(killed) == losses(straight)
    a, b = weights(straight), weights(killed)
    assert all(torch.equal(a[key], b[key]) for key in a)


def refused(run: Path, *overrides: str, home: Path) -> str:
    """train.py's one-line refusal (exit 2), after checking that the run directory stayed empty."""
    result = run_train(run, *overrides, home=home, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert not run.exists() or not any(run.iterdir())
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_a_stage_needs_a_finished_parent_of_the_same_tokenizer(trained_run, tmp_path, llm_home):
    before = files_of(trained_run)
    assert "init_from=DIR" in refused(tmp_path / "a", *MID, home=llm_home)
    assert "no run directory there" in refused(tmp_path / "b", *MID, f"init_from={tmp_path / 'nothing'}", home=llm_home)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    (unfinished / "summary.json").write_text(json.dumps({"status": "running", "step": 3}))
    assert "is not finished (status running)" in refused(tmp_path / "c", *MID, f"init_from={unfinished}", home=llm_home)
    line = refused(tmp_path / "d", *MID, f"init_from={trained_run}", "data.vocab_size=1024", home=llm_home)
    assert "has another tokenizer (data.vocab_size=512, here 1024)" in line
    assert "drop init_from" in refused(tmp_path / "e", *TINY_RUN, f"init_from={trained_run}", home=llm_home)
    assert files_of(trained_run) == before  # the parent is only read


def test_a_stage_refuses_a_directory_of_another_stage(trained_run, llm_home):
    before = files_of(trained_run)
    result = run_train(trained_run, *MID, f"init_from={trained_run}", home=llm_home, check=False)
    assert result.returncode == 2 and "holds a stage=base run, not stage=mid" in result.stderr
    assert files_of(trained_run) == before


@pytest.mark.slow
def test_bad_mixtures_are_refused_before_anything_is_written(trained_run, tmp_path, llm_home):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]\n'
                      '[{"role": "user", "content": "two users"}, {"role": "user", "content": "in a row"}]\n')
    line = refused(tmp_path / "a", *MID, f"init_from={trained_run}",
                   f"+stage.mixture.train.custom={{task: customjson, filepath: '{broken}'}}", home=llm_home)
    assert f"{broken}:2:" in line and "fix or remove that line" in line
    empty = ["+stage.mixture.train.identity.stop=0", *(f"~stage.mixture.train.{name}" for name in
             ("chatterbot", "wordnet_choice", "simple_spelling", "spelling_bee"))]
    assert "has no rows" in refused(tmp_path / "b", *MID, f"init_from={trained_run}", *empty, home=llm_home)
    assert "task 'nonesuch' is unknown" in refused(tmp_path / "c", *MID, f"init_from={trained_run}",
                                                  "+stage.mixture.train.x={task: nonesuch}", home=llm_home)
