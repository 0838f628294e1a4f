"""Bits per byte: a loss that does not depend on the tokenizer.

Mean cross-entropy per token rewards a tokenizer with long tokens. Summing the loss in nats over
all target tokens and dividing by the number of UTF-8 bytes those tokens stand for gives a figure
comparable across vocabularies. Special tokens (0 bytes) and ignored targets (-1) count for nothing.
"""

import math
from typing import Iterator

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, batches: Iterator, steps: int, token_bytes: torch.Tensor) -> float:
    device = token_bytes.device
    nats = torch.zeros((), dtype=torch.float32, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    for _ in range(steps):
        inputs, targets = next(batches)
        losses = model(inputs, targets, loss_reduction="none").reshape(-1)
        targets = targets.reshape(-1)
        target_bytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)
        nats += (losses * (target_bytes > 0)).sum()
        nbytes += target_bytes.sum()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(nats)
        dist.all_reduce(nbytes)
    if nbytes.item() == 0:
        raise ValueError("the evaluation batches hold no countable bytes: raise eval.tokens")
    return nats.item() / (math.log(2) * nbytes.item())
