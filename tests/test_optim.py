"""MuonAdamW against plain, unfused implementations of its formulas; schedules; group assembly."""

import io
import math

import pytest
import torch
from omegaconf import OmegaConf

from llm.optim import (DistMuonAdamW, MuonAdamW, apply_schedules, build_optimizer, lr_multiplier,
                       muon_momentum, weight_decay_at)
from llm.optim.muon_adamw import adamw_update, as_scalar, fused_adamw_update, polar_express
from llm.optim.schedules import lr_phases
from tests.conftest import optim_config

# Amsel et al., "The Polar Express" (arXiv:2505.16932): 5 iterations, safety 2e-2, cushion 2.
PAPER_COEFFICIENTS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def bf16(value: float) -> float:
    """The Muon update is computed in bfloat16, so its scalars are rounded to bfloat16 too."""
    return torch.tensor(value).bfloat16().item()


def random_grads(params, generator):
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


# ---------------------------------------------------------------------------------------------
# Plain implementations, one matrix or tensor at a time, in float64 except where bf16 is the spec.

class PlainAdamW:
    def __init__(self, param: torch.Tensor):
        self.step_count, self.m, self.v = 0, torch.zeros_like(param), torch.zeros_like(param)

    def step(self, param, grad, lr, beta1, beta2, eps, wd):
        self.step_count += 1
        t = self.step_count
        param = param * (1 - lr * wd)
        self.m = beta1 * self.m + (1 - beta1) * grad
        self.v = beta2 * self.v + (1 - beta2) * grad * grad
        m_hat, v_hat = self.m / (1 - beta1 ** t), self.v / (1 - beta2 ** t)
        return param - lr * m_hat / (v_hat.sqrt() + eps)


def plain_polar_express(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The quintic iteration on the wide orientation of one matrix, in bfloat16."""
    x = matrix.bfloat16()
    x = x / (torch.linalg.matrix_norm(x.float()).bfloat16() * 1.02 + 1e-6)
    transpose = matrix.shape[0] > matrix.shape[1]
    if transpose:
        x = x.T
    for a, b, c in PAPER_COEFFICIENTS[:steps]:
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if transpose else x


class PlainMuon:
    def __init__(self, param: torch.Tensor):
        rows, cols = param.shape
        self.momentum_buffer = torch.zeros_like(param, dtype=torch.float64)
        self.per_row = rows >= cols  # second moment along the longer side
        self.second_moment = torch.zeros(rows if self.per_row else cols, dtype=torch.float64)

    def step(self, param, grad, lr, momentum, beta2, wd, ns_steps=5):
        rows, cols = param.shape
        grad = grad.double()
        self.momentum_buffer = momentum * self.momentum_buffer + (1 - momentum) * grad
        nesterov = momentum * self.momentum_buffer + (1 - momentum) * grad
        update = plain_polar_express(nesterov.float(), ns_steps).double()
        mean_sq = (update ** 2).mean(dim=1 if self.per_row else 0)
        beta2 = bf16(beta2)
        self.second_moment = beta2 * self.second_moment + (1 - beta2) * mean_sq
        rms = self.second_moment.sqrt()
        normalised = update / (rms[:, None] if self.per_row else rms[None, :])
        normalised *= update.norm() / normalised.norm()
        lr = bf16(lr * math.sqrt(max(1.0, rows / cols)))
        decay = bf16(lr) * bf16(wd) * param.double() * (normalised * param.double() >= 0)
        return (param.double() - lr * normalised - decay).float()


# ---------------------------------------------------------------------------------------------
# Update rules

def test_adamw_matches_plain_implementation_over_steps():
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(7, 5, generator=gen)),
              torch.nn.Parameter(torch.randn(3, generator=gen))]
    unused = torch.nn.Parameter(torch.randn(4, generator=gen))
    settings = [dict(lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1),
                dict(lr=0.5, betas=(0.96, 0.95), eps=1e-8, weight_decay=0.0)]
    groups = [dict(kind="adamw", params=[params[0], unused], **settings[0]),
              dict(kind="adamw", params=[params[1]], **settings[1])]
    optimizer = MuonAdamW(groups)
    expected = [p.detach().double().clone() for p in params]
    plain = [PlainAdamW(e) for e in expected]
    unused_before = unused.detach().clone()
    for step in range(6):
        random_grads(params, gen)
        for group in optimizer.param_groups:
            group["lr"] *= 0.8  # hyperparameters change between steps, as under a schedule
        optimizer.step()
        for i, (p, s) in enumerate(zip(params, settings)):
            lr = optimizer.param_groups[i]["lr"]
            expected[i] = plain[i].step(expected[i], p.grad.double(), lr, *s["betas"], s["eps"],
                                        s["weight_decay"])
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-5, atol=1e-6)
    assert torch.equal(unused, unused_before) and not optimizer.state[unused]


def test_fused_adamw_kernel_is_the_adamw_formula():
    # The eager optimizer runs PyTorch's fused kernel; the compiled one runs adamw_update's formula.
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(64, 48, generator=gen)
    fused = [start.clone(), torch.zeros(64, 48), torch.zeros(64, 48)]  # param, exp_avg, exp_avg_sq
    formula = [start.clone(), torch.zeros(64, 48), torch.zeros(64, 48)]
    for step in range(1, 6):
        grad = torch.randn(64, 48, generator=gen)
        hyper = [as_scalar(v) for v in (step, 0.01 * step, 0.8, 0.95, 1e-10, 0.1)]  # step, lr, betas, eps, wd
        fused_adamw_update(fused[0], grad, *fused[1:], *hyper)
        adamw_update(formula[0], grad, *formula[1:], *hyper)
    assert (fused[0] - start).abs().min() > 0  # every weight moved
    for a, b in zip(fused, formula):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(32, 32), (48, 16), (16, 48)])
def test_polar_express_matches_plain_iteration_and_orthogonalises(shape):
    gen = torch.Generator().manual_seed(2)
    # Singular values spread over two and a half decades, which the iteration must bring close to 1.
    rank = min(shape)
    stack = torch.stack([
        torch.linalg.qr(torch.randn(shape[0], rank, generator=gen))[0] * torch.logspace(-1.5, 1, rank)
        @ torch.linalg.qr(torch.randn(shape[1], rank, generator=gen))[0].T
        for _ in range(3)
    ])
    result = polar_express(stack, ns_steps=5)
    assert result.dtype == torch.bfloat16
    for matrix, got in zip(stack, result):
        want = plain_polar_express(matrix, 5).float()
        assert (got.float() - want).norm() / want.norm() < 1e-2
        singular_values = torch.linalg.svdvals(got.float())
        assert singular_values.min() > 0.5 and singular_values.max() < 1.2


def test_muon_matches_plain_implementation_over_steps():
    gen = torch.Generator().manual_seed(3)
    shapes = [(32, 8), (32, 8), (8, 24), (16, 16)]  # tall (lr x2), wide, square
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen) * 0.3) for s in shapes]
    hyper = dict(lr=0.02, beta2=0.95, weight_decay=0.2, ns_steps=5)
    groups = [dict(kind="muon", params=[p for p in params if p.shape == s], momentum=0.85, **hyper)
              for s in sorted({p.shape for p in params})]
    optimizer = MuonAdamW(groups, ortho_dtype=torch.bfloat16)  # the reference's arithmetic, as PlainMuon's
    expected = [p.detach().clone() for p in params]
    plain = [PlainMuon(p) for p in expected]
    for step in range(5):
        random_grads(params, gen)
        momentum = muon_momentum(step, warmup_steps=4)
        for group in optimizer.param_groups:
            group["momentum"] = momentum
        before = [p.detach().clone() for p in params]
        grads = [p.grad.clone() for p in params]
        optimizer.step()
        for i, p in enumerate(params):
            # Both sides start each step from the same parameters so bf16 differences do not compound.
            expected[i] = plain[i].step(before[i], grads[i], hyper["lr"], momentum, hyper["beta2"],
                                        hyper["weight_decay"])
            moved, want = p.detach() - before[i], expected[i] - before[i]
            assert (moved - want).norm() / want.norm() < 1e-2, (step, i)
    # The momentum buffers involve no bfloat16 at all: they must agree to float32 precision.
    for group in optimizer.param_groups:
        buffers = optimizer.state[group["params"][0]]["momentum_buffer"]
        for p, buffer in zip(group["params"], buffers):
            index = next(i for i, q in enumerate(params) if q is p)
            torch.testing.assert_close(buffer.double(), plain[index].momentum_buffer, rtol=1e-5, atol=1e-7)


def test_cautious_weight_decay_only_shrinks_where_the_update_agrees():
    gen = torch.Generator().manual_seed(4)
    start, grad = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    results = {}
    for wd in (0.0, 0.5):
        param = torch.nn.Parameter(start.clone())
        param.grad = grad.clone()
        MuonAdamW([dict(kind="muon", params=[param], lr=0.1, momentum=0.9, ns_steps=5, beta2=0.95,
                        weight_decay=wd)]).step()
        results[wd] = param.detach()
    # Without decay the step is -lr * update, so the update's sign is the sign of -(change).
    agrees = (-(results[0.0] - start) * start) >= 0
    decay = results[0.0] - results[0.5]
    assert 0 < agrees.sum() < agrees.numel()
    torch.testing.assert_close(decay[agrees], bf16(0.1) * 0.5 * start[agrees], rtol=1e-2, atol=1e-5)
    assert torch.all(decay[~agrees] == 0)


def test_invalid_param_groups_are_rejected():
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 8))
    muon = dict(lr=0.02, momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=0.0)
    with pytest.raises(ValueError, match="one shape"):
        MuonAdamW([dict(kind="muon", params=[a, b], **muon)])
    with pytest.raises(ValueError, match="kind must be one of"):
        MuonAdamW([dict(kind="sgd", params=[a], lr=0.1)])
    with pytest.raises(ValueError, match="lacks"):
        MuonAdamW([dict(kind="adamw", params=[a], lr=0.1)])
    with pytest.raises(ValueError, match="ns_steps"):
        MuonAdamW([dict(kind="muon", params=[a], **{**muon, "ns_steps": 6})])


# ---------------------------------------------------------------------------------------------
# Schedules

def test_lr_multiplier_warmup_hold_warmdown():
    schedule = dict(num_iterations=100, warmup_ratio=0.1, warmdown_ratio=0.4, final_lr_frac=0.1)
    assert lr_multiplier(0, **schedule) == pytest.approx(0.1)
    assert lr_multiplier(4, **schedule) == pytest.approx(0.5)
    assert lr_multiplier(9, **schedule) == 1.0
    assert lr_multiplier(10, **schedule) == 1.0
    assert lr_multiplier(60, **schedule) == 1.0  # the last step before the warmdown
    assert lr_multiplier(61, **schedule) == pytest.approx(39 / 40 + (1 / 40) * 0.1)
    assert lr_multiplier(80, **schedule) == pytest.approx(0.55)
    assert lr_multiplier(100, **schedule) == pytest.approx(0.1)
    assert lr_multiplier(0, 100, 0.0, 0.4, 0.0) == 1.0
    assert lr_multiplier(99, 100, 0.0, 0.4, 0.0) == pytest.approx(1 / 40)
    # Step counts are rounded half to even: 0.5 * 5 = 2.5 -> 2 warmdown steps.
    assert lr_multiplier(3, 5, 0.0, 0.5, 0.0) == 1.0
    assert lr_multiplier(4, 5, 0.0, 0.5, 0.0) == pytest.approx(0.5)


def test_lr_phases_meet_where_one_ends_and_the_next_begins():
    phases = lr_phases(100, warmup_ratio=0.1, warmdown_ratio=0.4, final_lr_frac=0.1)
    assert [(p.name, p.last_step) for p in phases] == [("warmup", 9), ("constant", 60), ("warmdown", math.inf)]
    warmup, constant, warmdown = (p.multiplier for p in phases)
    assert warmup(-1) == 0.0 and warmup(9) == 1.0 == constant(9) == constant(60) == warmdown(60)
    assert warmdown(100) == pytest.approx(0.1)
    # A phase of no steps is never chosen: without warmup, step 0 is already at the peak.
    assert lr_phases(100, 0.0, 0.4, 0.1)[0].last_step == -1 and lr_multiplier(0, 100, 0.0, 0.4, 0.1) == 1.0


def test_muon_momentum_and_weight_decay_schedules():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(5000) == pytest.approx(0.95)
    assert muon_momentum(5, start=0.5, end=0.9, warmup_steps=10) == pytest.approx(0.7)
    assert muon_momentum(0, warmup_steps=0) == pytest.approx(0.95)
    assert weight_decay_at(0, 100, 0.2) == pytest.approx(0.2)
    assert weight_decay_at(50, 100, 0.2) == pytest.approx(0.1)
    assert weight_decay_at(75, 100, 0.2) == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------
# Building and scheduling the groups

LEARNING_RATES = dict(lm_head=0.001, wte=0.2, value_embeds=0.3, resid_lambdas=0.004, x0_lambdas=0.5,
                      matrices=0.02)


def toy_roles(seed=0, value_embeds=True):
    gen = torch.Generator().manual_seed(seed)

    def param(*shape):
        return torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.5)

    return dict(lm_head=[param(40, 16)], wte=[param(40, 16)],
                value_embeds=[param(40, 16)] if value_embeds else [],
                resid_lambdas=[param(3)], x0_lambdas=[param(3)],
                matrices=[param(32, 16), param(16, 32), param(32, 16), param(16, 16)])


def summary(group):
    shapes = [tuple(p.shape) for p in group["params"]]
    return group["kind"], group["lr"], group.get("betas"), group["weight_decay"], shapes


def test_build_muon_adamw_groups():
    cfg = optim_config()
    roles = toy_roles()
    optimizer = build_optimizer(roles, LEARNING_RATES, 0.3, cfg, distributed=False)
    assert type(optimizer) is MuonAdamW
    adam = [(cfg.adam_beta1, cfg.adam_beta2)]
    assert [summary(g) for g in optimizer.param_groups] == [
        ("adamw", 0.001, *adam, 0.0, [(40, 16)]),
        ("adamw", 0.2, *adam, 0.0, [(40, 16)]),
        ("adamw", 0.3, *adam, 0.0, [(40, 16)]),
        ("adamw", 0.004, *adam, 0.0, [(3,)]),
        ("adamw", 0.5, (cfg.x0_beta1, cfg.adam_beta2), 0.0, [(3,)]),
        ("muon", 0.02, None, 0.3, [(16, 16)]),
        ("muon", 0.02, None, 0.3, [(16, 32)]),
        ("muon", 0.02, None, 0.3, [(32, 16), (32, 16)]),
    ]
    for group in optimizer.param_groups:
        assert group["initial_lr"] == group["lr"]
        assert group["initial_weight_decay"] == group["weight_decay"]
        if group["kind"] == "adamw":
            assert group["eps"] == cfg.adam_eps
        else:
            assert (group["momentum"], group["ns_steps"], group["beta2"]) == (
                cfg.muon_momentum_end, cfg.muon_ns_steps, cfg.muon_beta2)


def test_build_adamw_baseline_and_distributed_and_empty_roles():
    cfg = optim_config(name="adamw")
    optimizer = build_optimizer(toy_roles(value_embeds=False), LEARNING_RATES, 0.3, cfg, distributed=True)
    assert type(optimizer) is DistMuonAdamW
    assert all(g["kind"] == "adamw" for g in optimizer.param_groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.001, 0.2, 0.004, 0.5, 0.02]
    matrices = optimizer.param_groups[-1]
    assert matrices["betas"] == (cfg.adam_beta1, cfg.adam_beta2) and matrices["weight_decay"] == 0.3
    assert len(matrices["params"]) == 4


def test_build_rejects_bad_names_and_roles():
    with pytest.raises(ValueError, match="muon_adamw.*adamw"):
        build_optimizer(toy_roles(), LEARNING_RATES, 0.0, OmegaConf.merge(optim_config(), {"name": "lion"}), distributed=False)
    roles = toy_roles()
    del roles["x0_lambdas"]
    with pytest.raises(ValueError, match="missing \\['x0_lambdas'\\]"):
        build_optimizer(roles, LEARNING_RATES, 0.0, optim_config(), distributed=False)
    with pytest.raises(ValueError, match="unknown \\['bias'\\]"):
        build_optimizer(toy_roles(), {**LEARNING_RATES, "bias": 1.0}, 0.0, optim_config(), distributed=False)


def test_apply_schedules_sets_lr_weight_decay_and_momentum():
    cfg = optim_config(warmup_ratio=0.0, warmdown_ratio=0.5, final_lr_frac=0.0, muon_momentum_warmup_steps=300)
    optimizer = build_optimizer(toy_roles(), LEARNING_RATES, 0.3, cfg, distributed=False)
    apply_schedules(optimizer, step=75, num_iterations=100, cfg=cfg)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["initial_lr"] * 0.5)
        assert group["weight_decay"] == pytest.approx(group["initial_weight_decay"] * 0.25)
        if group["kind"] == "muon":
            assert group["momentum"] == pytest.approx(0.85 + 0.1 * 75 / 300)


# ---------------------------------------------------------------------------------------------
# Checkpointing

def train_steps(optimizer, params, cfg, steps, num_iterations=10):
    for step in steps:
        random_grads(params, torch.Generator().manual_seed(100 + step))
        apply_schedules(optimizer, step, num_iterations, cfg)
        optimizer.step()


@pytest.mark.parametrize("name", ["muon_adamw", "adamw"])
def test_state_dict_round_trip_resumes_bit_identically(name):
    cfg = optim_config(name=name, warmup_ratio=0.2)
    roles = toy_roles()
    params = [p for ps in roles.values() for p in ps]
    optimizer = build_optimizer(roles, LEARNING_RATES, 0.3, cfg, distributed=False)
    train_steps(optimizer, params, cfg, range(3))
    saved = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "optim": optimizer.state_dict()}, saved)
    train_steps(optimizer, params, cfg, range(3, 7))

    saved.seek(0)
    checkpoint = torch.load(saved)
    resumed_roles = toy_roles(seed=1)  # different values, overwritten by the checkpoint
    resumed_params = [p for ps in resumed_roles.values() for p in ps]
    with torch.no_grad():
        for p, value in zip(resumed_params, checkpoint["params"]):
            p.copy_(value)
    resumed = build_optimizer(resumed_roles, LEARNING_RATES, 0.3, cfg, distributed=False)
    resumed.load_state_dict(checkpoint["optim"])
    train_steps(resumed, resumed_params, cfg, range(3, 7))
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)


def test_orthogonalisation_in_float32_where_bf16_matmuls_are_slow(monkeypatch):
    import llm.optim.muon_adamw as muon_adamw

    monkeypatch.setattr(muon_adamw, "fast_bf16_matmul", lambda device_type: False)
    param = torch.nn.Parameter(torch.randn(16, 8))
    fp32 = MuonAdamW([dict(kind="muon", params=[param], lr=0.02, momentum=0.9, ns_steps=5, beta2=0.95,
                           weight_decay=0.0)])
    assert fp32.ortho_dtype == torch.float32
    stack = torch.randn(2, 16, 8)
    exact = polar_express(stack, 5, torch.float32)
    assert exact.dtype == torch.float32
    singular_values = torch.linalg.svdvals(exact)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.2
