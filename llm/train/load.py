"""Loading a trained model for use: evaluation, chat, export.

A run directory is self-contained: its checkpoints carry the model's shape in meta.json and the run
keeps a copy of its tokenizer in DIR/tokenizer/, so a model can be used without its config, data or
data home.
"""

from pathlib import Path

import torch

from llm.data.tokenizer import Tokenizer
from llm.model.gpt import GPT
from llm.train import checkpoint
from llm.train.rundir import TOKENIZER_DIR


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """(model in eval mode, tokenizer, checkpoint meta) from a run directory or a checkpoint directory."""
    ckpt = checkpoint.resolve(Path(path))
    run_dir = ckpt.parent.parent
    meta = checkpoint.read_meta(ckpt)
    tokenizer = Tokenizer.load(run_dir / TOKENIZER_DIR)
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise checkpoint.CheckpointError(f"{run_dir / TOKENIZER_DIR} has vocab {tokenizer.vocab_size} but {ckpt} was trained with "
                         f"{meta['vocab_size']}: the run directory is inconsistent")
    device = torch.device(device)
    with torch.device("meta"):
        model = GPT(checkpoint.shape_of(meta))
    model.to_empty(device=device)
    model.init_weights()  # buffers (rotary tables) and dtypes; the weights come from the checkpoint
    model.load_state_dict(checkpoint.load_weights(ckpt, device))
    model.eval()
    return model, tokenizer, meta
