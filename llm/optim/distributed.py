"""MuonAdamW across data-parallel ranks, with gradients and optimizer state sharded (ZeRO-2 style).

Each rank has the gradient of its own part of the batch. Instead of all-reducing whole gradients
and having every rank repeat the same update, the ranks split the work by rows:

- a large AdamW parameter is cut into blocks of ceil(rows / world) rows; reduce_scatter hands each
  rank the averaged gradient of its block, the rank updates those rows, and all_gather puts the
  parameter back together everywhere;
- a Muon group, stacked into (K, rows, cols), is cut the same way along K: each rank orthogonalises
  whole matrices, ceil(K / world) of them;
- a small AdamW parameter (fewer than SMALL_PARAM_NUMEL elements) is all-reduced and updated in
  full on every rank: splitting it would cost more in messages than it saves.

Optimizer state exists only for the rows a rank updates, so each rank's state_dict is its own
shard. When rows (or K) do not divide by the world size, the last blocks are zero-padded for the
collectives, which need equal blocks. All reductions are launched before any update, so the
communication of later groups overlaps the updates of earlier ones; the gathers are awaited last.
The update math is MuonAdamW's, run on the shards.
"""

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from llm.optim.muon_adamw import MuonAdamW, require_grads

SMALL_PARAM_NUMEL = 1024

# A launched reduction and what to do once it lands: update this rank's rows, then launch the
# gather that shares them, returning it with the step that finishes it (None when nothing is sent).
Gather = tuple[dist.Work, Callable[[], None]]
Reduction = tuple[dist.Work, Callable[[], Gather | None]]


def pad_rows(tensor: Tensor, rows: int) -> Tensor:
    """`tensor` with zero rows appended up to `rows` (the tensor itself if it already has them)."""
    if tensor.shape[0] == rows:
        return tensor
    padded = tensor.new_zeros(rows, *tensor.shape[1:])
    padded[: tensor.shape[0]] = tensor
    return padded


def owned_rows(total_rows: int, block_rows: int, rank: int) -> tuple[int, int]:
    """(first row, number of rows) that `rank` updates; ranks past the end own no rows."""
    start = rank * block_rows
    return start, max(0, min(block_rows, total_rows - start))


def reduce_scatter_rows(full: Tensor, world: int) -> tuple[dist.Work, Tensor, Tensor]:
    """Launch the averaging reduce_scatter of `full` by row blocks.

    Returns the pending work, this rank's block (valid once the work is waited on) and the padded
    input, which the caller may reuse once the work is done.
    """
    block_rows = -(-full.shape[0] // world)
    padded = pad_rows(full, block_rows * world)
    block = padded.new_empty(block_rows, *padded.shape[1:])
    work = dist.reduce_scatter_single(block, padded, op=dist.ReduceOp.AVG, async_op=True)
    return work, block, padded


class DistMuonAdamW(MuonAdamW):
    """MuonAdamW for data-parallel training; call step() on every rank after backward().

    Gradients must not be averaged beforehand (no DDP wrapper): step() does that itself. Needs an
    initialised default process group (NCCL on GPUs, gloo on CPUs).
    """

    def _reduce_adamw(self, group: dict, param: Tensor, rank: int, world: int) -> Reduction:
        if param.numel() < SMALL_PARAM_NUMEL:
            work = dist.all_reduce(param.grad, op=dist.ReduceOp.AVG, async_op=True)
            return work, lambda: self._adamw_step(group, param, param.grad, self.state[param])

        work, grad_block, _ = reduce_scatter_rows(param.grad, world)

        def update() -> Gather:
            block_rows = grad_block.shape[0]
            start, count = owned_rows(param.shape[0], block_rows, rank)
            mine = param[start:start + count]
            if count:
                self._adamw_step(group, mine, grad_block[:count], self.state[param])
            if block_rows * world == param.shape[0]:
                # No padding: gather straight into the parameter, whose block is already in place.
                return dist.all_gather_single(param, mine, async_op=True), lambda: None
            gathered = param.new_empty(block_rows * world, *param.shape[1:])
            gather = dist.all_gather_single(gathered, pad_rows(mine, block_rows), async_op=True)
            return gather, lambda: param.copy_(gathered[: param.shape[0]])

        return work, update

    def _reduce_muon(self, group: dict, rank: int, world: int) -> Reduction:
        params = group["params"]
        work, grad_block, stacked = reduce_scatter_rows(torch.stack([p.grad for p in params]), world)

        def update() -> Gather:
            block_len = grad_block.shape[0]
            start, count = owned_rows(len(params), block_len, rank)
            updated = torch.zeros_like(grad_block)
            if count:
                mine = torch.stack(params[start:start + count])
                self._muon_step(group, grad_block[:count], mine, self.state[params[0]], block_len)
                updated[:count] = mine
            # The stacked gradients are spent: their buffer receives the updated matrices.
            gather = dist.all_gather_single(stacked, updated, async_op=True)
            return gather, lambda: torch._foreach_copy_(params, list(stacked[: len(params)].unbind(0)))

        return work, update

    @torch.no_grad()
    def step(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        reductions: list[Reduction] = []
        for group in self.param_groups:
            # Every rank must join every collective, so a missing gradient cannot just be skipped.
            require_grads(group)
            if group["kind"] == "adamw":
                reductions += [self._reduce_adamw(group, p, rank, world) for p in group["params"]]
            else:
                reductions.append(self._reduce_muon(group, rank, world))
        gathers: list[Gather] = []
        for work, update in reductions:
            work.wait()
            gather = update()
            if gather is not None:
                gathers.append(gather)
        for work, finish in gathers:
            work.wait()
            finish()
