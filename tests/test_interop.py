"""Checkpoint conversion to and from nanochat's format: files, metadata, and identical logits."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import tiktoken
import torch

from llm.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, token_bytes
from llm.interop import COMPILE_PREFIX, InteropError, from_nanochat, to_nanochat
from llm.model import attention
from llm.train import checkpoint
from llm.train.load import load_model
from llm.train.loop import LoopState
from tests.conftest import REPO

MODEL_CONFIG_KEYS = {"sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern"}


@pytest.fixture(autouse=True)
def sdpa():
    attention.set_backend("sdpa")


@pytest.fixture(scope="module")
def original(trained_run):
    return load_model(trained_run)


def logits_of(model, tokenizer):
    ids = torch.tensor([tokenizer.encode("def interop(a, b):\n    return a + b", prepend=tokenizer.bos_id)])
    with torch.no_grad():
        return model(ids)


def test_round_trip_through_nanochat_keeps_every_logit(trained_run, original, tmp_path):
    model, tokenizer, meta = original
    exported = tmp_path / "nanochat" / "d2"
    to_nanochat(trained_run, exported)
    step = meta["step"]
    assert sorted(p.name for p in exported.iterdir()) == [f"meta_{step:06d}.json", f"model_{step:06d}.pt", "tokenizer"]

    nanochat_meta = json.loads((exported / f"meta_{step:06d}.json").read_text())
    plan = meta["plan"]
    assert nanochat_meta["step"] == step and set(nanochat_meta["model_config"]) == MODEL_CONFIG_KEYS
    assert nanochat_meta["model_config"] == {
        "sequence_len": plan["sequence_len"], "vocab_size": plan["vocab_size"], "n_layer": plan["depth"],
        "n_head": plan["n_head"], "n_kv_head": plan["n_kv_head"], "n_embd": plan["model_dim"],
        "window_pattern": plan["window_pattern"]}
    weights = torch.load(exported / f"model_{step:06d}.pt", weights_only=True)
    assert weights.keys() == model.state_dict().keys()

    # nanochat reads its tokenizer with plain pickle and gets a working tiktoken Encoding.
    with open(exported / "tokenizer" / "tokenizer.pkl", "rb") as handle:
        encoding = pickle.load(handle)
    text = "def f(x):\n    return x ** 2  # naïve"
    assert isinstance(encoding, tiktoken.Encoding) and encoding.encode_ordinary(text) == tokenizer.encode(text)
    assert encoding.encode_single_token("<|assistant_end|>") == tokenizer.encode_special("<|assistant_end|>")
    assert torch.equal(torch.load(exported / "tokenizer" / "token_bytes.pt", weights_only=True), token_bytes(tokenizer))

    imported = tmp_path / "imported"
    from_nanochat(exported, imported)
    model2, tokenizer2, meta2 = load_model(imported)
    assert torch.equal(logits_of(model, tokenizer), logits_of(model2, tokenizer2))
    assert tokenizer2.encode(text) == tokenizer.encode(text)
    # The plan an import derives from model_config agrees with the one training computed.
    for key in ("depth", "model_dim", "n_head", "head_dim", "sequence_len", "window_pattern", "params",
                "scaling_params", "flops_per_token"):
        assert meta2["plan"][key] == plan[key], key
    assert meta2["step"] == step and meta2["world_size"] == 1 and meta2["loop"]["step"] == step
    summary = json.loads((imported / "summary.json").read_text())
    assert summary["status"] == "imported" and summary["step"] == step
    assert checkpoint.latest(imported / "checkpoints").name == f"step_{step:06d}"


def write_nanochat_layout(base, model, tokenizer, meta, pattern=None):
    """nanochat's own layout: base/base_checkpoints/d2 with compiled-model keys, base/tokenizer/tokenizer.pkl."""
    folder = base / "base_checkpoints" / "d2"
    folder.mkdir(parents=True)
    step = meta["step"]
    torch.save({COMPILE_PREFIX + k: v for k, v in model.state_dict().items()}, folder / f"model_{step:06d}.pt")
    torch.save({"state": {}, "param_groups": []}, folder / f"optim_{step:06d}_rank0.pt")
    plan = meta["plan"]
    model_config = {"sequence_len": plan["sequence_len"], "vocab_size": plan["vocab_size"], "n_layer": plan["depth"],
                    "n_head": plan["n_head"], "n_kv_head": plan["n_kv_head"], "n_embd": plan["model_dim"],
                    "window_pattern": plan["window_pattern"]}
    (folder / f"meta_{step:06d}.json").write_text(json.dumps(
        {"step": step, "val_bpb": 1.5, "model_config": model_config, "user_config": {"depth": 2},
         "loop_state": {"min_val_bpb": 1.4, "smooth_train_loss": 3.0, "total_training_time": 42.0}}))
    ranks = tokenizer.mergeable_ranks
    encoding = tiktoken.Encoding("rustbpe", pat_str=pattern or SPLIT_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)})
    (base / "tokenizer").mkdir()
    with open(base / "tokenizer" / "tokenizer.pkl", "wb") as handle:
        pickle.dump(encoding, handle)
    return folder


def test_import_of_a_compiled_nanochat_checkpoint(original, tmp_path):
    model, tokenizer, meta = original
    folder = write_nanochat_layout(tmp_path / "nanochat", model, tokenizer, meta)
    with pytest.warns(UserWarning, match="optimizer shard"):
        ckpt = from_nanochat(folder, tmp_path / "run")  # tokenizer found at folder/../../tokenizer
    assert sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "model.pt"]
    assert all(not k.startswith(COMPILE_PREFIX) for k in torch.load(ckpt / "model.pt", weights_only=True))
    model2, tokenizer2, meta2 = load_model(tmp_path / "run")
    assert torch.equal(logits_of(model, tokenizer), logits_of(model2, tokenizer2))
    assert meta2["nanochat_meta"]["user_config"] == {"depth": 2}
    loop = LoopState(**meta2["loop"])  # what resuming would build from it
    assert (loop.step, loop.val_bpb, loop.min_val_bpb, loop.train_time_sec) == (meta["step"], 1.5, 1.4, 42.0)


def test_foreign_tokenizers_and_malicious_pickles_are_refused(original, tmp_path):
    model, tokenizer, meta = original
    folder = write_nanochat_layout(tmp_path / "other", model, tokenizer, meta, pattern=r"\S+|\s+")
    with pytest.raises(InteropError, match="another split pattern"):
        from_nanochat(folder, tmp_path / "run")

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(InteropError, match="only a pickled tiktoken Encoding"):
        from_nanochat(folder, tmp_path / "run", tokenizer_path=evil)
    assert not marker.exists() and not (tmp_path / "run").exists()


def interop(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm.interop", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_never_overwrites_and_reports_bad_sources(trained_run, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    result = interop("to-nanochat", trained_run, occupied)
    assert result.returncode == 2 and "not an empty directory" in result.stderr and result.stderr.count("\n") == 1
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]

    result = interop("from-nanochat", tmp_path / "nowhere", tmp_path / "new")
    assert result.returncode == 2 and "model_XXXXXX.pt" in result.stderr and not (tmp_path / "new").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    result = interop("to-nanochat", trained_run, empty)  # an empty directory is an acceptable destination
    assert result.returncode == 0, result.stderr
    assert (empty / "model_000012.pt").is_file()
