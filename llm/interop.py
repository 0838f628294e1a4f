"""Convert checkpoints between this project's run directories and nanochat's checkpoint folders.

    python -m llm.interop from-nanochat SRC DST [--step N] [--tokenizer PATH]
    python -m llm.interop to-nanochat SRC DST

nanochat keeps a model as flat files in one folder and its tokenizer in its base directory:

    base/base_checkpoints/d20/model_000500.pt       state_dict (keys may carry torch.compile's `_orig_mod.`)
    base/base_checkpoints/d20/meta_000500.json      {"step", "model_config": {...}, ...}
    base/base_checkpoints/d20/optim_000500_rank0.pt optimizer shard per rank (optional)
    base/tokenizer/tokenizer.pkl                    a pickled tiktoken Encoding
    base/tokenizer/token_bytes.pt                   bytes per token, for bits per byte

The model's parameter names are the same in both projects, so weights copy across unchanged.
`to-nanochat` writes the tokenizer into DST/tokenizer/; `from-nanochat` looks for it at --tokenizer,
then SRC/tokenizer/, then SRC/../../tokenizer/ (nanochat's own layout). DST must be new or empty.

nanochat's optimizer state does not map onto this project's (its Muon keeps `second_momentum_buffer`,
its groups lack `initial_weight_decay`) and it carries no dataloader position in our format, so an
imported run holds weights only: it can be evaluated, chatted with and fine-tuned, not resumed.
"""

import argparse
import json
import pickle
import re
import warnings
from pathlib import Path

import tiktoken
import torch

from llm.cli import exit_on
from llm.config.derived import ModelShape, describe_shape
from llm.data.paths import publish_directory
from llm.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, token_bytes
from llm.model.gpt import GPT
from llm.train import checkpoint
from llm.train.checkpoint import CheckpointError
from llm.train.rundir import TOKENIZER_DIR

COMPILE_PREFIX = "_orig_mod."
NANOCHAT_ENCODING_NAME = "rustbpe"
MODEL_FILE = re.compile(r"model_(\d+)\.pt")


class InteropError(Exception):
    """Input that cannot be converted; the message says what to fix."""


def check_destination(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise InteropError(f"{dst} already exists and is not an empty directory: choose a new destination")


# --- nanochat -> this project ---------------------------------------------------------------------


def nanochat_specials(mergeable_ranks: dict) -> dict[str, int]:
    """Special token ids as both projects assign them: right after the learned tokens, in a fixed order."""
    return {token: len(mergeable_ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}


class _EncodingState:
    """Stands in for tiktoken's Encoding while unpickling and keeps the constructor arguments it is given."""

    def __setstate__(self, state):
        self.state = state


class _EncodingOnlyUnpickler(pickle.Unpickler):
    """Unpickling can run any code the file names; resolve only the Encoding class, to a harmless stand-in."""

    def find_class(self, module, name):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise InteropError(f"tokenizer.pkl refers to {module}.{name}; only a pickled tiktoken Encoding is accepted")


def read_nanochat_tokenizer(path: Path) -> Tokenizer:
    """Our Tokenizer from nanochat's tokenizer.pkl, refused unless it splits and numbers tokens as ours does."""
    pkl = path / "tokenizer.pkl" if path.is_dir() else path
    if not pkl.is_file():
        raise InteropError(f"no tokenizer.pkl at {path}: pass --tokenizer pointing to nanochat's tokenizer directory")
    with open(pkl, "rb") as handle:
        try:
            loaded = _EncodingOnlyUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError) as error:
            raise InteropError(f"{pkl} is not a pickled tiktoken Encoding ({error})")
    # A registered encoding (gpt2, cl100k_base…) pickles as just its name and is not a nanochat tokenizer.
    state = getattr(loaded, "state", None)
    if not isinstance(state, dict) or not {"pat_str", "mergeable_ranks", "special_tokens"} <= state.keys():
        raise InteropError(f"{pkl} does not hold a custom tiktoken Encoding as nanochat writes it")
    ranks = state["mergeable_ranks"]
    if state["pat_str"] != SPLIT_PATTERN or state["special_tokens"] != nanochat_specials(ranks):
        raise InteropError(f"{pkl} uses another split pattern or special tokens than this project; "
                           "only tokenizers trained with nanochat's SPLIT_PATTERN and SPECIAL_TOKENS convert")
    return Tokenizer(ranks, name=NANOCHAT_ENCODING_NAME)


def find_step(src: Path, step: int | None) -> int:
    steps = sorted(int(m.group(1)) for p in src.glob("model_*.pt") if (m := MODEL_FILE.fullmatch(p.name)))
    if not steps:
        raise InteropError(f"{src} holds no model_XXXXXX.pt: point SRC at a nanochat checkpoint folder")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise InteropError(f"{src} has no step {step}; it has {', '.join(map(str, steps))}")
    return step


def shape_from_model_config(config: dict) -> ModelShape:
    try:
        return ModelShape(depth=config["n_layer"], model_dim=config["n_embd"], n_head=config["n_head"],
                          n_kv_head=config["n_kv_head"], head_dim=config["n_embd"] // config["n_head"],
                          sequence_len=config["sequence_len"],
                          # Checkpoints from before sliding windows attended over the full context.
                          window_pattern=config.get("window_pattern", "L").upper(),
                          vocab_size=config["vocab_size"])
    except KeyError as missing:
        raise InteropError(f"model_config lacks {missing}: the meta file is not from a nanochat GPT")


def read_nanochat_weights(path: Path, shape: ModelShape) -> dict:
    """The state dict with compile prefixes stripped, checked key by key and shape by shape against our GPT."""
    state = {key.removeprefix(COMPILE_PREFIX): value
             for key, value in torch.load(path, map_location="cpu", weights_only=True).items()}
    # Older checkpoints predate these scalars; these values make the blocks behave as they did then.
    state.setdefault("resid_lambdas", torch.ones(shape.depth))
    state.setdefault("x0_lambdas", torch.zeros(shape.depth))
    with torch.device("meta"):
        expected = GPT(shape).state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong_shape = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        raise InteropError(f"{path} does not match the model its meta describes (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}, wrong shape {wrong_shape[:3]}): is it a nanochat GPT "
                           "of the same version?")
    return state


def default_tokenizer_path(src: Path) -> Path:
    for candidate in (src / TOKENIZER_DIR, src.parent.parent / TOKENIZER_DIR):
        if (candidate / "tokenizer.pkl").is_file():
            return candidate
    raise InteropError(f"no tokenizer.pkl in {src / TOKENIZER_DIR} or {src.parent.parent / TOKENIZER_DIR}: "
                       "pass --tokenizer PATH")


def from_nanochat(src: Path, dst: Path, step: int | None = None, tokenizer_path: Path | None = None) -> Path:
    """Write a run directory at `dst` holding nanochat's checkpoint at `src`; returns the checkpoint dir."""
    check_destination(dst)
    step = find_step(src, step)
    meta_path = src / f"meta_{step:06d}.json"
    if not meta_path.is_file():
        raise InteropError(f"{meta_path} is missing: a nanochat checkpoint needs its meta file")
    nanochat_meta = json.loads(meta_path.read_text())
    if "model_config" not in nanochat_meta:
        raise InteropError(f"{meta_path} has no model_config")
    shape = shape_from_model_config(nanochat_meta["model_config"])
    tokenizer = read_nanochat_tokenizer(tokenizer_path or default_tokenizer_path(src))
    if tokenizer.vocab_size != shape.vocab_size:
        raise InteropError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model was trained with "
                           f"{shape.vocab_size}: pass the tokenizer the model was trained with")
    state = read_nanochat_weights(src / f"model_{step:06d}.pt", shape)
    optimizer_shards = sorted(src.glob(f"optim_{step:06d}_rank*.pt"))
    if optimizer_shards:
        warnings.warn(f"skipped {len(optimizer_shards)} optimizer shard(s): nanochat's optimizer state does not "
                      "map onto this project's, so the imported run can be evaluated, chatted with and "
                      "fine-tuned but not resumed bit-exactly")

    plan = describe_shape(shape)
    # The training-loop figures nanochat records, under our loop state's names; the original meta is kept whole.
    nanochat_loop = nanochat_meta.get("loop_state", {})
    loop = {"step": step, "val_bpb": nanochat_meta.get("val_bpb"), "min_val_bpb": nanochat_loop.get("min_val_bpb"),
            "train_time_sec": nanochat_loop.get("total_training_time", 0.0)}
    meta = {"vocab_size": shape.vocab_size, "loop": loop, "plan": plan, "nanochat_meta": nanochat_meta}
    summary = {"status": "imported", "source": str(src.resolve()), "step": step, "val_bpb": loop["val_bpb"],
               "params": plan["params"], "scaling_params": plan["scaling_params"],
               "flops_per_token": plan["flops_per_token"], "world_size": 1, "plan": plan}
    with publish_directory(dst) as staging:
        ckpt = checkpoint.save_weights(staging / "checkpoints", step, state, meta)
        tokenizer.save(staging / TOKENIZER_DIR)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
    return dst / "checkpoints" / ckpt.name


# --- this project -> nanochat ---------------------------------------------------------------------


def to_nanochat(src: Path, dst: Path) -> Path:
    """Write our run's newest checkpoint (or the checkpoint `src`) as a nanochat folder; returns the model file."""
    check_destination(dst)
    try:
        ckpt = checkpoint.resolve(src)
    except FileNotFoundError as error:
        raise InteropError(str(error))
    meta = checkpoint.read_meta(ckpt)
    shape = checkpoint.shape_of(meta)
    run_dir = ckpt.parent.parent
    tokenizer = Tokenizer.load(run_dir / TOKENIZER_DIR)
    step = meta["step"]
    model_config = {"sequence_len": shape.sequence_len, "vocab_size": shape.vocab_size, "n_layer": shape.depth,
                    "n_head": shape.n_head, "n_kv_head": shape.n_kv_head, "n_embd": shape.model_dim,
                    "window_pattern": shape.window_pattern}
    nanochat_meta = {"step": step, "model_config": model_config, "val_bpb": meta.get("loop", {}).get("val_bpb"),
                     "source": str(run_dir.resolve())}
    encoding = tiktoken.Encoding(NANOCHAT_ENCODING_NAME, pat_str=SPLIT_PATTERN,
                                 mergeable_ranks=tokenizer.mergeable_ranks,
                                 special_tokens=nanochat_specials(tokenizer.mergeable_ranks))
    with publish_directory(dst) as staging:
        torch.save(torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True),
                   staging / f"model_{step:06d}.pt")
        (staging / f"meta_{step:06d}.json").write_text(json.dumps(nanochat_meta, indent=2))
        (staging / TOKENIZER_DIR).mkdir()
        with open(staging / TOKENIZER_DIR / "tokenizer.pkl", "wb") as handle:
            pickle.dump(encoding, handle)
        torch.save(token_bytes(tokenizer), staging / TOKENIZER_DIR / "token_bytes.pt")
    return dst / f"model_{step:06d}.pt"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm.interop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    importer = commands.add_parser("from-nanochat", help="nanochat checkpoint folder -> run directory")
    importer.add_argument("src", type=Path, help="folder with model_XXXXXX.pt and meta_XXXXXX.json")
    importer.add_argument("dst", type=Path, help="new run directory")
    importer.add_argument("--step", type=int, help="which step to convert (default: the newest)")
    importer.add_argument("--tokenizer", type=Path, help="tokenizer.pkl or its directory")
    exporter = commands.add_parser("to-nanochat", help="run directory or checkpoint -> nanochat checkpoint folder")
    exporter.add_argument("src", type=Path, help="run directory or checkpoints/step_N directory")
    exporter.add_argument("dst", type=Path, help="new nanochat checkpoint folder")
    args = parser.parse_args(argv)
    with exit_on(InteropError, CheckpointError, FileNotFoundError, ValueError, prog="llm.interop"):
        if args.command == "from-nanochat":
            written = from_nanochat(args.src, args.dst, args.step, args.tokenizer)
        else:
            written = to_nanochat(args.src, args.dst)
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
