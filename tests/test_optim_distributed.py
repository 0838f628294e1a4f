"""DistMuonAdamW on two gloo ranks must train exactly like MuonAdamW on one process.

Each rank sees half of every batch. The single-process run accumulates the gradients of the same
two halves with weight 1/2 each, which is the full-batch gradient and equals, bit for bit, the
average that the ranks' reductions compute. The toy model's row counts (41 embedding rows, 3 or 1
matrices of a shape) do not divide by 2, so the padded shards and a rank with nothing to update
are exercised, as are the small all-reduced parameters.
"""

import io
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from llm.optim import apply_schedules, build_optimizer
from tests.conftest import optim_config as composed_optim

WORLD = 2
STEPS = 4
RESUME_AT = 2  # the distributed run is also checkpointed here and resumed on every rank
VOCAB, DIM, HIDDEN, LAYERS, BATCH = 41, 32, 64, 3, 8
LEARNING_RATES = dict(lm_head=0.004, wte=0.2, value_embeds=0.2, resid_lambdas=0.005, x0_lambdas=0.5,
                      matrices=0.02)


def optim_config(name: str):
    return composed_optim(name, warmup_ratio=0.25, warmdown_ratio=0.5, final_lr_frac=0.1,
                          muon_momentum_warmup_steps=STEPS)


def toy_roles(seed: int) -> dict[str, list[torch.nn.Parameter]]:
    gen = torch.Generator().manual_seed(seed)

    def param(*shape):
        return torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.3)

    matrices = [param(*shape) for _ in range(LAYERS) for shape in ((HIDDEN, DIM), (DIM, HIDDEN))]
    return dict(lm_head=[param(VOCAB, DIM)], wte=[param(VOCAB, DIM)], value_embeds=[param(VOCAB, DIM)],
                resid_lambdas=[param(LAYERS)], x0_lambdas=[param(LAYERS)],
                matrices=matrices + [param(DIM, DIM)])


def toy_loss(roles, tokens, targets):
    (wte,), (value_embed,), (lm_head,) = roles["wte"], roles["value_embeds"], roles["lm_head"]
    (resid,), (x0_weight,), matrices = roles["resid_lambdas"], roles["x0_lambdas"], roles["matrices"]
    x0 = x = wte[tokens]
    for layer in range(LAYERS):
        x = resid[layer] * x + x0_weight[layer] * x0
        x = x + torch.relu(x @ matrices[2 * layer].T) @ matrices[2 * layer + 1].T
    x = x @ matrices[-1].T + value_embed[tokens]
    return F.cross_entropy(x @ lm_head.T, targets)


def train(optimizer, roles, name, steps, halves, weight):
    """Run `steps`; each accumulates the gradients of the batch `halves`, times `weight`."""
    for step in steps:
        gen = torch.Generator().manual_seed(1000 + step)
        tokens, targets = torch.randint(VOCAB, (2, BATCH), generator=gen)
        for half in halves:
            part = slice(half * BATCH // 2, (half + 1) * BATCH // 2)
            (toy_loss(roles, tokens[part], targets[part]) * weight).backward()
        apply_schedules(optimizer, step, STEPS, optim_config(name))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def flat(roles):
    return [p for params in roles.values() for p in params]


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    outcome = {}
    for name in ("muon_adamw", "adamw"):
        roles = toy_roles(seed=0)
        optimizer = build_optimizer(roles, LEARNING_RATES, 0.2, optim_config(name), distributed=True)
        train(optimizer, roles, name, range(RESUME_AT), halves=[rank], weight=1.0)
        checkpoint = io.BytesIO()
        params = [p.detach().clone() for p in flat(roles)]
        torch.save({"params": params, "optim": optimizer.state_dict()}, checkpoint)
        train(optimizer, roles, name, range(RESUME_AT, STEPS), halves=[rank], weight=1.0)

        checkpoint.seek(0)
        saved = torch.load(checkpoint)
        resumed_roles = toy_roles(seed=1)
        with torch.no_grad():
            for p, value in zip(flat(resumed_roles), saved["params"]):
                p.copy_(value)
        resumed = build_optimizer(resumed_roles, LEARNING_RATES, 0.2, optim_config(name), distributed=True)
        resumed.load_state_dict(saved["optim"])
        train(resumed, resumed_roles, name, range(RESUME_AT, STEPS), halves=[rank], weight=1.0)

        outcome[name] = dict(
            params=[p.detach() for p in flat(roles)],
            resumed=[p.detach() for p in flat(resumed_roles)],
            wte_state_rows=optimizer.state[roles["wte"][0]]["exp_avg"].shape[0],
        )
    torch.save(outcome, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    context = mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the gloo ranks did not finish within 120 s")
    return {rank: torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)}


def single_process_run(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that every kernel sums in the same order
    try:
        roles = toy_roles(seed=0)
        optimizer = build_optimizer(roles, LEARNING_RATES, 0.2, optim_config(name), distributed=False)
        train(optimizer, roles, name, range(STEPS), halves=range(WORLD), weight=1 / WORLD)
        return [p.detach() for p in flat(roles)]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["muon_adamw", "adamw"])
def test_ranks_match_single_process_training(rank_results, name):
    expected = single_process_run(name)
    initial = flat(toy_roles(seed=0))
    for rank in range(WORLD):
        got = rank_results[rank][name]["params"]
        for p, want, start in zip(got, expected, initial):
            assert not torch.equal(want, start)  # training moved every parameter
            torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-7)
    for p0, p1 in zip(rank_results[0][name]["params"], rank_results[1][name]["params"]):
        assert torch.equal(p0, p1)


@pytest.mark.parametrize("name", ["muon_adamw", "adamw"])
def test_each_rank_resumes_from_its_own_state_bit_identically(rank_results, name):
    for rank in range(WORLD):
        outcome = rank_results[rank][name]
        assert all(torch.equal(p, q) for p, q in zip(outcome["params"], outcome["resumed"]))
    # The state is sharded: 41 embedding rows split as 21 + 20.
    assert [rank_results[rank][name]["wte_state_rows"] for rank in range(WORLD)] == [21, 20]
