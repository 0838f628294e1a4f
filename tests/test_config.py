"""The composed configs and everything derived from them, checked against the real model."""

import subprocess
import sys

import pytest
import torch

from llm.config import derived
from llm.model.gpt import GPT
from llm.train.build import gpt_config
from tests.conftest import REPO, compose_config


def test_d20_plan_matches_the_reference_numbers():
    plan = derived.plan(compose_config("model=d20"))
    assert plan.shape.model_dim == 1280 and plan.shape.n_head == 10 and plan.shape.head_dim == 128
    assert plan.params == {"wte": 41_943_040, "value_embeds": 419_430_400, "lm_head": 41_943_040,
                           "transformer_matrices": 393_219_200, "scalars": 40, "total": 896_535_720}
    assert plan.num_iterations == 8715
    assert plan.grad_accum_steps == 8


@pytest.mark.parametrize("overrides", [
    ["model=d2"], ["model=d4", "model.head_dim=64"], ["model.depth=5", "model.head_dim=64"],
    ["model=d6", "model.head_dim=64", "model.window_pattern=L", "model.sequence_len=512"],
    ["model=d12", "model.window_pattern=SSL", "data.vocab_size=50000"],
    ["model=d26"],
])
def test_derived_counts_equal_the_real_model(overrides):
    plan = derived.plan(compose_config(*overrides))
    with torch.device("meta"):
        model = GPT(gpt_config(plan.shape))
    assert model.num_scaling_params() == plan.params
    assert model.estimate_flops() == plan.flops_per_token
    assert [left for left, _ in model.window_sizes] == plan.shape.window_lengths


def test_budget_precedence_and_formulas():
    cfg = compose_config("model=d12", "budget=flops", "budget.target_flops=1e18")
    plan = derived.plan(cfg)
    assert plan.num_iterations == round(1e18 / (plan.flops_per_token * 524288))
    cfg = compose_config("model=d12", "budget.num_iterations=7", "budget.target_flops=1e18")
    assert derived.plan(cfg).num_iterations == 7  # explicit iterations win over everything
    cfg = compose_config("model=d12", "budget=ratio", "budget.target_param_data_ratio=20")
    plan = derived.plan(cfg)
    assert plan.num_iterations == int(20 * plan.scaling_params) // 524288


def test_learning_rate_and_weight_decay_scaling():
    cfg = compose_config("model=d8", "train.total_batch_size=131072")
    plan = derived.plan(cfg)
    batch, width = (131072 / 2**19) ** 0.5, (512 / 768) ** -0.5
    assert plan.learning_rates["matrices"] == pytest.approx(0.02 * batch)
    assert plan.learning_rates["lm_head"] == pytest.approx(0.004 * width * batch)
    assert plan.learning_rates["wte"] == pytest.approx(0.3 * width * batch)
    assert plan.learning_rates["resid_lambdas"] == pytest.approx(0.005 * batch)
    assert plan.learning_rates["x0_lambdas"] == pytest.approx(0.5 * batch)
    assert plan.weight_decay == pytest.approx(0.2 * (12 / 8) ** 2)


@pytest.mark.parametrize("overrides, message", [
    (["model.depth=0"], "model.depth=0 is impossible"),
    (["train.total_batch_size=1000"], "not a multiple of"),
    (["model.window_pattern=SXL"], "use only the letters S and L"),
    (["budget=iterations", "budget.num_iterations=-1"], "no training horizon"),
])
def test_impossible_values_fail_with_one_clear_line(overrides, message, tmp_path):
    result = subprocess.run([sys.executable, "train.py", *overrides, "dry_run=true", f"hydra.run.dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


@pytest.mark.parametrize("override", ["model.dept=3", "optim.matrix_lr=abc", "model=d7"])
def test_unknown_or_mistyped_options_are_rejected_by_hydra(override, tmp_path):
    result = subprocess.run([sys.executable, "train.py", override, "dry_run=true", f"hydra.run.dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert override.split("=")[0].split(".")[-1] in result.stderr or "d7" in result.stderr
