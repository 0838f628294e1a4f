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
The update math is that of MuonAdamW's rules, run on the shards.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from llm.optim.muon_adamw import AdamWRule, MuonAdamW, MuonRule, require_grads

SMALL_PARAM_NUMEL = 1024


class Pending(NamedTuple):
    """A launched collective and what to do once it has landed: the continuation of a reduction
    updates this rank's rows and returns the gather that shares them (None when nothing is sent);
    that of a gather puts the gathered rows in place and returns None."""

    work: dist.Work
    then: Callable[[], "Pending | None"]

    def land(self) -> "Pending | None":
        self.work.wait()
        return self.then()


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


def sharded_adamw(rule: AdamWRule, group: dict, param: Tensor, state: dict, rank: int, world: int) -> Pending:
    """AdamW on one parameter: this rank updates its block of rows (or all of a small parameter)."""
    if param.numel() < SMALL_PARAM_NUMEL:
        work = dist.all_reduce(param.grad, op=dist.ReduceOp.AVG, async_op=True)
        return Pending(work, lambda: rule.update(group, param, param.grad, state))

    work, grad_block, _ = reduce_scatter_rows(param.grad, world)

    def update_and_share() -> Pending:
        block_rows = grad_block.shape[0]
        start, count = owned_rows(param.shape[0], block_rows, rank)
        mine = param[start:start + count]
        if count:
            rule.update(group, mine, grad_block[:count], state)
        if block_rows * world == param.shape[0]:
            # No padding: gather straight into the parameter, whose block is already in place.
            return Pending(dist.all_gather_single(param, mine, async_op=True), lambda: None)
        gathered = param.new_empty(block_rows * world, *param.shape[1:])
        gather = dist.all_gather_single(gathered, pad_rows(mine, block_rows), async_op=True)
        return Pending(gather, lambda: param.copy_(gathered[: param.shape[0]]))

    return Pending(work, update_and_share)


def sharded_muon(rule: MuonRule, group: dict, states: dict, rank: int, world: int) -> Pending:
    """Muon on one group: this rank updates its block of whole matrices of the stack."""
    params = group["params"]
    work, grad_block, stacked = reduce_scatter_rows(torch.stack([p.grad for p in params]), world)

    def update_and_share() -> Pending:
        block_len = grad_block.shape[0]
        start, count = owned_rows(len(params), block_len, rank)
        updated = torch.zeros_like(grad_block)
        if count:
            mine = torch.stack(params[start:start + count])
            rule.update(group, grad_block[:count], mine, states[params[0]], block_len)
            updated[:count] = mine
        # The stacked gradients are spent: their buffer receives the updated matrices.
        gather = dist.all_gather_single(stacked, updated, async_op=True)
        return Pending(gather, lambda: torch._foreach_copy_(params, list(stacked[: len(params)].unbind(0))))

    return Pending(work, update_and_share)


class DistMuonAdamW(MuonAdamW):
    """MuonAdamW for data-parallel training; call step() on every rank after backward().

    Gradients must not be averaged beforehand (no DDP wrapper): step() does that itself. Needs an
    initialised default process group (NCCL on GPUs, gloo on CPUs).
    """

    @torch.no_grad()
    def step(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        reductions: list[Pending] = []
        for group, rule in zip(self.param_groups, self.rules):
            # Every rank must join every collective, so a missing gradient cannot just be skipped.
            require_grads(group)
            if isinstance(rule, AdamWRule):
                reductions += [sharded_adamw(rule, group, p, self.state[p], rank, world) for p in group["params"]]
            else:
                reductions.append(sharded_muon(rule, group, self.state, rank, world))
        gathers = [gather for gather in (reduction.land() for reduction in reductions) if gather is not None]
        for gather in gathers:
            gather.land()
