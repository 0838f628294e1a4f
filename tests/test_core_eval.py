"""CORE scoring: prompt rendering, spans, accuracy with models whose losses are known, the bundle
format (local and downloaded), data-parallel striding, the offline bundle, and the training hook."""

import hashlib
import json
import random
import socket
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from llm.data.corpus import stdlib_sources
from llm.data.tokenizer import Tokenizer
from llm.eval import core
from llm.eval.bundle import ensure_core_bundle, load_bundle, write_bundle
from llm.eval.offline import build_offline_bundle
from llm.model import GPT, ModelShape
from llm.train import runtime as runtimes


class CharTokenizer:
    """One token per character (its code point); BOS is 0."""
    bos_id = 0

    def encode(self, texts, prepend=None):
        return [[prepend] + [ord(c) for c in text] for text in texts]


class RepeatModel(torch.nn.Module):
    """Predicts that every token repeats: a continuation costs ~0 per repeated token, ~10 per change.

    It records the length of every batch it sees and how many it was asked to score.
    """

    def __init__(self, vocab: int = 128):
        super().__init__()
        self.vocab, self.lengths = vocab, []

    def forward(self, ids):
        self.lengths.append(ids.size(1))
        return 10.0 * torch.nn.functional.one_hot(ids, self.vocab).float()


def task_entry(label, task_type, examples, baseline=25.0, shots=0, delimiter=" "):
    return {"label": label, "task_type": task_type, "num_fewshot": shots, "continuation_delimiter": delimiter,
            "random_baseline": baseline, "category": "test", "examples": examples}


def make_bundle(directory: Path, *tasks: dict) -> Path:
    write_bundle(directory, list(tasks))
    return directory


def score_all(tmp_path, entry, model=None, max_tokens=10_000, max_per_task=-1):
    task = load_bundle(make_bundle(tmp_path / entry["label"], entry))[0]
    result = core.evaluate_core(model or RepeatModel(), CharTokenizer(), [task], max_per_task, max_tokens,
                                torch.device("cpu"))
    return result["tasks"][entry["label"]]["accuracy"]


# ----------------------------------------------------------------------------- rendering

def test_prompt_rendering_of_the_three_formats():
    mc = [{"query": "Q1", "choices": ["x", "y"], "gold": 1}]
    assert core.render_multiple_choice({"query": "Q", "choices": ["a", "b"], "gold": 0}, " -> ", mc) == [
        "Q1 -> y\n\nQ -> a", "Q1 -> y\n\nQ -> b"]
    schema = [{"context_options": ["c0", "c1"], "continuation": "k", "gold": 0}]
    assert core.render_schema({"context_options": ["A", "B"], "continuation": "end", "gold": 1}, " ", schema) == [
        "c0 k\n\nA end", "c0 k\n\nB end"]
    lm = [{"context": "  ctx one \n", "continuation": "cont"}]
    assert core.render_language_modeling({"context": "the sky is ", "continuation": "blue"}, " ", lm) == [
        "ctx one cont\n\nthe sky is", "ctx one cont\n\nthe sky is blue"]
    assert core.render_language_modeling({"context": "a", "continuation": "b"}, "\n", []) == ["a", "a\nb"]


def test_fewshot_examples_are_fixed_per_index_and_exclude_the_example():
    data = [{"i": i} for i in range(30)]
    for index in (0, 7, 29):
        shots = core.fewshot_examples(data, index, 5)
        others = [i for i in range(30) if i != index]
        assert [s["i"] for s in shots] == random.Random(1234 + index).sample(others, 5)
        assert data[index] not in shots and shots == core.fewshot_examples(data, index, 5)
    assert core.fewshot_examples(data, 3, 5) != core.fewshot_examples(data, 4, 5)


def test_spans_from_common_prefix_suffix_and_lm_prefix():
    tok = CharTokenizer()
    spans = core.continuation_spans("multiple_choice", tok, ["q aab", "q ac"])
    assert [(s.start, s.end) for s in spans] == [(4, 6), (4, 5)]  # BOS q ' ' a shared
    spans = core.continuation_spans("schema", tok, ["xx end", "y end"])
    assert [(s.start, s.end) for s in spans] == [(3, 7), (2, 6)]  # " end" shared
    assert core.continuation_spans("language_modeling", tok, ["ab", "ab cd"]) == [
        core.Span([0, 97, 98, 32, 99, 100], 3, 6)]
    with pytest.raises(ValueError, match="prefix"):
        core.continuation_spans("language_modeling", tok, ["abc", "abd"])
    assert core.common_length([[1, 2, 3], [1, 2, 3]]) == 3 and core.common_length([[1, 2], [3, 2]], from_end=True) == 1


def test_crop_from_the_left_keeps_the_continuation():
    assert core.Span(list(range(10)), 6, 10).cropped(6) == core.Span(list(range(4, 10)), 2, 6)
    assert core.Span(list(range(4)), 2, 4).cropped(6) == core.Span(list(range(4)), 2, 4)
    with pytest.raises(ValueError, match="does not fit"):
        core.Span(list(range(10)), 3, 10).cropped(6)


class KnownLogits(torch.nn.Module):
    """Returns fixed logits for whatever batch it is given (cropped to the batch's length)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, ids):
        return self.logits[:ids.size(0), :ids.size(1)]


def test_span_scores_average_only_the_scored_tokens():
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0))
    spans = [core.Span([1, 2, 3, 4, 5, 6, 7], 2, 7), core.Span([1, 9, 3], 1, 3), core.Span([4, 4, 4, 4], 3, 4)]
    ids = [span.tokens for span in spans]
    scores = core.score_spans(KnownLogits(logits), spans, pad_id=0, device=torch.device("cpu"))
    for row, span in enumerate(spans):
        # Written per token: the loss of token t is predicted by the logits at t - 1.
        losses = [torch.nn.functional.cross_entropy(logits[row, t - 1], torch.tensor(ids[row][t])).item()
                  for t in range(span.start, span.end)]
        assert scores.mean_loss[row].item() == pytest.approx(sum(losses) / len(losses), rel=1e-6)
        greedy = all(logits[row, t - 1].argmax().item() == ids[row][t] for t in range(span.start, span.end))
        assert bool(scores.all_greedy[row]) == greedy
    forced = logits.clone()
    forced[2, 2, 4] = 100.0  # makes the one scored token of the last span the argmax
    assert core.score_spans(KnownLogits(forced), spans, 0, torch.device("cpu")).all_greedy[2]


# ----------------------------------------------------------------------------- scoring with known losses

def test_multiple_choice_picks_the_lowest_mean_loss(tmp_path):
    examples = [
        {"query": "q", "choices": ["aaaa", "abab"], "gold": 0},  # right: "aaa" repeats
        {"query": "q", "choices": ["aaaa", "abab"], "gold": 1},  # wrong
        # Mean and sum disagree: 2 changes in 10 tokens (mean 0.2) against 1 change in 1 token (mean 1).
        {"query": "q", "choices": ["byyyyyyyyy", "c"], "gold": 0},
        {"query": "q", "choices": ["c", "byyyyyyyyy", "dz"], "gold": 1},
    ]
    assert score_all(tmp_path, task_entry("mc", "multiple_choice", examples)) == 0.75


def test_schema_picks_the_context_that_best_predicts_the_continuation(tmp_path):
    examples = [
        {"context_options": ["ab", "az"], "continuation": "zzz", "gold": 1},  # right: z after z
        {"context_options": ["ab", "az"], "continuation": "zzz", "gold": 0},  # wrong
        {"context_options": ["qb", "qz", "bb"], "continuation": "bbb", "gold": 0},  # tie at 0: the first wins
    ]
    assert score_all(tmp_path, task_entry("sc", "schema", examples, delimiter="")) == pytest.approx(2 / 3)


def test_language_modeling_needs_every_greedy_token(tmp_path):
    examples = [{"context": "xy", "continuation": "yyy"}, {"context": "xy", "continuation": "yyz"},
                {"context": "  ab ", "continuation": "bb"}, {"context": "a", "continuation": "b"}]
    assert score_all(tmp_path, task_entry("lm", "language_modeling", examples, 0, delimiter="")) == 0.5


def test_long_prompts_are_cropped_to_the_model_context(tmp_path):
    model = RepeatModel()
    examples = [{"query": "q" * 200, "choices": ["aaaa", "abab"], "gold": 0}] * 3
    assert score_all(tmp_path, task_entry("long", "multiple_choice", examples), model, max_tokens=20) == 1.0
    assert max(model.lengths) == 20
    with pytest.raises(ValueError, match="does not fit"):
        score_all(tmp_path, task_entry("toolong", "multiple_choice", examples), model, max_tokens=3)


def test_max_per_task_takes_the_first_n_of_a_fixed_shuffle(tmp_path):
    examples = [{"context": f"c{i:02d}", "continuation": "x"} for i in range(40)]
    seen = []

    class Recorder(RepeatModel):
        def forward(self, ids):
            seen.append("".join(map(chr, ids[0, 1:4].tolist())))
            return super().forward(ids)

    score_all(tmp_path, task_entry("sub", "language_modeling", examples, 0), Recorder(), max_per_task=7)
    shuffled = list(examples)
    random.Random(1337).shuffle(shuffled)
    assert seen == [e["context"] for e in shuffled[:7]]
    with pytest.raises(ValueError, match="raise eval.core_max_per_task above 10"):
        score_all(tmp_path, task_entry("tenshot", "language_modeling", examples, 0, shots=10), max_per_task=10)


def test_centered_accuracy_and_the_core_average(tmp_path):
    assert core.centered(0.25, 25) == 0 and core.centered(1.0, 25) == 1 and core.centered(0.1, 0) == 0.1
    assert core.centered(0.0, 50) == -1
    mc = task_entry("mc", "multiple_choice", [{"query": "q", "choices": ["aaaa", "abab"], "gold": g}
                                              for g in (0, 0, 0, 1)], baseline=50)  # accuracy 0.75
    lm = task_entry("lm", "language_modeling", [{"context": "a", "continuation": c} for c in ("aa", "ab")],
                    baseline=0, delimiter="")  # accuracy 0.5
    bundle = make_bundle(tmp_path / "two", mc, lm)
    result = core.evaluate_core(RepeatModel(), CharTokenizer(), load_bundle(bundle), -1, 100, torch.device("cpu"))
    assert result["tasks"] == {"mc": {"accuracy": 0.75, "centered": 0.5}, "lm": {"accuracy": 0.5, "centered": 0.5}}
    assert result["score"] == 0.5


# ----------------------------------------------------------------------------- the bundle on disk

def test_bundle_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="core.yaml"):
        load_bundle(tmp_path)
    bundle = make_bundle(tmp_path / "b", task_entry("mc", "multiple_choice", []))
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nother,25\n")
    with pytest.raises(ValueError, match="random baseline"):
        load_bundle(bundle)
    with pytest.raises(ValueError, match="not a directory"):
        core.locate_bundle(str(tmp_path / "missing"), tmp_path)


def test_real_bundle_download_unpacks_atomically(tmp_path):
    source = make_bundle(tmp_path / "src", task_entry("mc", "multiple_choice", [{"query": "q", "choices": ["a", "b"],
                                                                                  "gold": 0}]))
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in source.rglob("*"):
            zipped.write(path, Path("eval_bundle") / path.relative_to(source))
    home = tmp_path / "home"
    home.mkdir()
    bundle = ensure_core_bundle(home, url=archive.as_uri())
    assert bundle == home / "eval_bundle" and [t.label for t in load_bundle(bundle)] == ["mc"]
    assert sorted(p.name for p in home.iterdir()) == [".eval_bundle.lock", "eval_bundle"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="after 5 attempts"):
        ensure_core_bundle(empty, url=(tmp_path / "absent.zip").as_uri(), backoff_s=0)
    assert sorted(p.name for p in empty.iterdir()) == [".eval_bundle.lock"]


# ----------------------------------------------------------------------------- a real model and tokenizer

@pytest.fixture(scope="module")
def real_model():
    text = "".join(path.read_text(errors="replace") for path in stdlib_sources()[:40])
    tokenizer = Tokenizer.train([text], vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelShape(depth=1, model_dim=64, n_head=2, n_kv_head=2, head_dim=32, sequence_len=48,
                           window_pattern="L", vocab_size=300))
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # decisive losses, not near-ties
    return model.eval(), tokenizer


def _unbatched_pick(model, tokenizer, task, data, index):
    """The lowest-mean-loss row, each row run alone through the model's own loss (no padding, no batch)."""
    prompts = core.RENDERERS[task.task_type](data[index], task.continuation_delimiter,
                                             core.fewshot_examples(data, index, task.num_fewshot))
    means = []
    for span in core.continuation_spans(task.task_type, tokenizer, prompts):
        span = span.cropped(48)
        ids = torch.tensor([span.tokens])
        losses = model(ids[:, :-1], ids[:, 1:], loss_reduction="none")
        means.append(losses[span.start - 1:span.end - 1].mean().item())
    return means.index(min(means))


def test_local_bundle_scored_by_a_real_model_matches_unbatched_losses(tmp_path, real_model):
    model, tokenizer = real_model
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    rng = random.Random(0)
    mc, schema = [], []
    for n in range(6):
        choices = rng.sample(words, 4)
        mc += [{"query": f"def f{n}(x): return", "choices": choices, "gold": gold} for gold in range(4)]
        options = [f"import {w}\n# {n}" for w in rng.sample(words, 3)]
        schema += [{"context_options": options, "continuation": "print(x)", "gold": gold} for gold in range(3)]
    lm = [{"context": f"for i in range({n}):", "continuation": " pass"} for n in range(8)]
    bundle = make_bundle(tmp_path / "local", task_entry("mc", "multiple_choice", mc, shots=2),
                         task_entry("sc", "schema", schema, baseline=100 / 3, delimiter="\n"),
                         task_entry("lm", "language_modeling", lm, baseline=0, shots=1))
    tasks = load_bundle(bundle)
    assert [(t.label, t.task_type, t.num_fewshot) for t in tasks] == [
        ("mc", "multiple_choice", 2), ("sc", "schema", 0), ("lm", "language_modeling", 1)]
    for task in tasks[:2]:
        data = task.examples()
        verdicts = [core.score_example(model, tokenizer, task, data, i, 48, torch.device("cpu"))
                    for i in range(len(data))]
        assert verdicts == [_unbatched_pick(model, tokenizer, task, data, i) == data[i]["gold"]
                            for i in range(len(data))]
    # 0-shot, each schema question appears once per gold position, so exactly one copy of it is right.
    assert all(sum(verdicts[i:i + 3]) == 1 for i in range(0, len(verdicts), 3))
    result = core.evaluate_core(model, tokenizer, tasks, -1, 48, torch.device("cpu"))
    assert result["tasks"]["sc"]["accuracy"] == pytest.approx(1 / 3)
    assert result["score"] == pytest.approx(sum(t["centered"] for t in result["tasks"].values()) / 3)


def test_core_score_is_the_training_hook(tmp_path, real_model):
    model, tokenizer = real_model
    bundle = make_bundle(tmp_path / "hook", task_entry("lm", "language_modeling",
                                                       [{"context": "x = 1", "continuation": "\ny = 2"}] * 3, 0))
    eval_cfg = OmegaConf.create({"bundle": str(bundle), "core_max_per_task": 2})
    runtime = runtimes.start("cpu", "float32", 0)
    model.train()
    result = core.core_score(model, tokenizer, eval_cfg, runtime, tmp_path)
    assert model.training  # the mode is restored
    model.eval()
    assert set(result) == {"score", "tasks", "bundle"} and result["bundle"] == str(bundle)
    assert result["tasks"]["lm"]["accuracy"] in (0.0, 1.0) and result["score"] == result["tasks"]["lm"]["centered"]


# ----------------------------------------------------------------------------- two ranks

def _rank_main(rank: int, world: int, port: int, bundle: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = RepeatModel()
    result = core.evaluate_core(model, CharTokenizer(), load_bundle(bundle), -1, 1000, torch.device("cpu"))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"result": result, "forwards": len(model.lengths)}))
    dist.destroy_process_group()


def test_two_gloo_ranks_share_the_examples_and_agree_with_one(tmp_path):
    rng = random.Random(3)
    examples = [{"query": "q", "choices": rng.sample(["aaaa", "abab", "aabb", "baaa"], 3), "gold": rng.randrange(3)}
                for _ in range(13)]
    bundle = make_bundle(tmp_path / "dist", task_entry("mc", "multiple_choice", examples))
    single = core.evaluate_core(RepeatModel(), CharTokenizer(), load_bundle(bundle), -1, 1000, torch.device("cpu"))
    assert 0 < single["tasks"]["mc"]["accuracy"] < 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank_main, args=(2, port, str(bundle), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["forwards"] for r in ranks] == [7, 6]  # examples 0, 2, ..., 12 and 1, 3, ..., 11
    assert ranks[0]["result"] == ranks[1]["result"] == single


# ----------------------------------------------------------------------------- the offline bundle

def _function(name: str, n: int) -> str:
    return f"def {name}_{n}(value):\n    total = value + {n}\n    return total * {n}\n"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """A train shard of train_only_* functions and a validation shard of held_out_* functions."""
    directory = tmp_path_factory.mktemp("corpus")
    shards = {"shard_00000.parquet": "train_only", "shard_00001.parquet": "held_out"}
    for shard, name in shards.items():
        documents = ["".join(_function(name, 10 * d + k) for k in range(3)) for d in range(12)]
        pq.write_table(pa.table({"text": documents}), directory / shard)
    return directory


def _digests(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_offline_bundle_is_deterministic_and_held_out(tmp_path, tiny_corpus):
    build_offline_bundle(tiny_corpus, tmp_path / "a")
    build_offline_bundle(tiny_corpus, tmp_path / "b")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert set(_digests(tmp_path / "a")) == {"core.yaml", "eval_meta_data.csv", "eval_data/next_line.jsonl",
                                             "eval_data/next_line_choice.jsonl", "eval_data/context_choice.jsonl"}
    tasks = load_bundle(tmp_path / "a")
    assert [(t.label, t.task_type, t.random_baseline, t.continuation_delimiter) for t in tasks] == [
        ("next_line", "language_modeling", 0.0, "\n"), ("next_line_choice", "multiple_choice", 25.0, "\n"),
        ("context_choice", "schema", 25.0, "\n")]
    text = "".join(t.data_path.read_text() for t in tasks)
    assert "held_out" in text and "train_only" not in text
    lm, mc, schema = (t.examples() for t in tasks)
    assert len(lm) == len(mc) == len(schema) == 36  # one example per definition
    for plain, choice, sc in zip(lm, mc, schema):
        number = plain["context"].split("_")[2].split("(")[0]
        assert plain["context"] == f"def held_out_{number}(value):\n    total = value + {number}"
        assert plain["continuation"] == f"    return total * {number}"
        assert choice["query"] == plain["context"] and choice["choices"][choice["gold"]] == plain["continuation"]
        assert sc["context_options"][sc["gold"]] == plain["context"] and len(set(sc["context_options"])) == 4
