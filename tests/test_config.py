"""The composed configs and everything derived from them, checked against the real model."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from llm.config import CONF_DIR, composition_complaint, derived
from llm.config.cadence import is_due
from llm.config.derived import ModelShape
from llm.data.fineweb import LAST_SHARD, _linked_view, shard_indices, shard_name
from llm.model.gpt import GPT
from llm.tasks.registry import TASKS
from tests.conftest import REPO, compose_config


def test_d20_plan_matches_the_reference_numbers():
    plan = derived.plan(compose_config("model=d20"))
    assert plan.shape.model_dim == 1280 and plan.shape.n_head == 10 and plan.shape.head_dim == 128
    assert plan.params == {"wte": 41_943_040, "value_embeds": 419_430_400, "lm_head": 41_943_040,
                           "transformer_matrices": 393_219_200, "scalars": 40, "total": 896_535_720}
    # 6 per matmul weight (matrices + lm_head), plus 12 * n_head * head_dim per attended key: SSSL over
    # 20 layers gives 15 half-context (1024) layers and 5 full (2048) ones.
    assert plan.flops_per_token == 6 * (393_219_200 + 41_943_040) + 12 * 10 * 128 * (15 * 1024 + 5 * 2048)
    assert plan.num_iterations == 8715
    assert plan.grad_accum_steps == 8


def numel_by_role(model: GPT) -> dict[str, int]:
    """The parameter breakdown counted from the built model's tensors, by the role each plays."""
    groups = {role: sum(p.numel() for p in params) for role, params in model.parameter_groups().items()}
    counts = {"wte": groups["wte"], "value_embeds": groups["value_embeds"], "lm_head": groups["lm_head"],
              "transformer_matrices": groups["matrices"],
              "scalars": groups["resid_lambdas"] + groups["x0_lambdas"]}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


SHAPES_OF_CONFIGS = [
    ["model=d2"], ["model=d4", "model.head_dim=64"], ["model.depth=5", "model.head_dim=64"],
    ["model=d6", "model.head_dim=64", "model.window_pattern=L", "model.sequence_len=512"],
    ["model=d12", "model.window_pattern=SSL", "data.vocab_size=50000"], ["model=d26"], ["preset=tiny_cpu", "model.depth=1"],
]
GROUPED_QUERY_SHAPES = [  # shapes no config makes (fewer kv heads than query heads), as the model allows
    ModelShape(depth=3, model_dim=64, n_head=4, n_kv_head=2, head_dim=16, sequence_len=16, window_pattern="SL",
               vocab_size=1000),
    ModelShape(depth=5, model_dim=128, n_head=4, n_kv_head=1, head_dim=32, sequence_len=48, window_pattern="SSSL",
               vocab_size=777),
]


@pytest.mark.parametrize("shape", [derived.plan(compose_config(*o)).shape for o in SHAPES_OF_CONFIGS]
                         + GROUPED_QUERY_SHAPES, ids=lambda shape: f"d{shape.depth}-{shape.model_dim}")
def test_config_layer_counts_equal_the_built_model(shape):
    with torch.device("meta"):
        model = GPT(shape)
    assert numel_by_role(model) == derived.parameter_counts(shape)
    assert [left for left, _ in model.window_sizes] == shape.window_lengths
    assert sorted(int(i) for i in model.value_embeds) == shape.value_embed_layers


def test_window_lengths_tile_the_pattern_and_end_long():
    shape = ModelShape(6, 64, 2, 2, 32, 64, "sssl", 512)
    assert shape.window_lengths == [32, 32, 32, 64, 32, 64]
    assert shape.value_embed_layers == [1, 3, 5]


def test_budget_kind_chooses_the_horizon():
    plan = derived.plan(compose_config("model=d12", "budget=flops", "budget.target_flops=1e18"))
    assert plan.num_iterations == round(1e18 / (plan.flops_per_token * 524288))
    plan = derived.plan(compose_config("model=d12", "budget=ratio", "budget.target_param_data_ratio=20"))
    assert plan.num_iterations == int(20 * plan.scaling_params) // 524288
    assert derived.plan(compose_config("model=d12", "budget=iterations", "budget.num_iterations=7")).num_iterations == 7
    # Each kind holds only its own quantity: another kind's key is refused, not silently outranked.
    with pytest.raises(HydraException, match="target_flops"):
        compose_config("model=d12", "budget=iterations", "budget.target_flops=1e18")


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


def refusal(*overrides: str) -> str:
    """The one-line message a run (dry or real) gives for these overrides: composing, then planning."""
    try:
        derived.plan(compose_config(*overrides, "dry_run=true"))
    except derived.ConfigError as error:
        return str(error)
    except (HydraException, OmegaConfBaseException) as error:
        return composition_complaint(error)
    raise AssertionError(f"{overrides} were accepted")


BAD_INPUTS = [
    (["device=tpu"], "expected one of [auto, cpu, cuda, mps]"),
    (["dtype=float8"], "expected one of [auto, float32, bfloat16]"),
    (["wandb.mode=sometimes"], "expected one of [offline, online, disabled]"),
    (["optim.name=sgd"], "expected one of [muon_adamw, adamw]"),
    (["dataloader.name=shuffle"], "expected one of [bos_bestfit, stream]"),
    (["dataloader.shard_by=files"], "expected one of [row_groups, rows]"),
    (["data.name=wikipedia"], "expected one of [embedded, fineweb_edu, parquet]"),
    (["attention.backend=flash"], "expected one of [auto, fa3, sdpa]"),
    (["model=d7"], "Could not find 'model/d7' (options: d10"),
    (["model.dept=3"], "Key 'dept' not in 'ModelConfig'"),
    (["optim.matrix_lr=abc"], "could not be converted to Float"),
    (["budget=bogus"], "Could not find 'budget/bogus' (options: epochs, flops, iterations, ratio)"),
    (["stage=ppo"], "Could not find 'stage/ppo' (options: base, mid, rl, sft)"),
    (["stage=mid"], "stage=mid continues a trained model: name its run directory with init_from=DIR"),
    (["stage=sft", "init_from=x", "stage.examples_per_step=6"], "stage.examples_per_step=6 is not a multiple of"),
    (["budget=epochs"], "budget=epochs counts passes over a chat mixture"),
    (["stage=sft", "init_from=x", "stage/mixture=nonesuch"], "Could not find 'stage/mixture/nonesuch'"),
    (["budget.target_flops=1e18"], "Key 'target_flops' not in 'RatioBudget'"),
    (["budget=iterations", "budget.num_iterations=0"], "no training horizon"),
    (["budget=flops", "budget.target_flops=1"], "no training horizon"),
    (["model.depth=0"], "model.depth=0 is impossible"),
    (["model.head_dim=15"], "must be even"),
    (["model.sequence_len=1"], "too short"),
    (["train.total_batch_size=1000"], "not a multiple of"),
    (["model.window_pattern=SXL"], "use only the letters S and L"),
    (["eval.every=-2"], "eval.every=-2 is not a cadence"),
    (["eval.core_every=-3"], "eval.core_every=-3 is not a cadence"),
    (["checkpoint.every=-5"], "checkpoint.every=-5 is not a cadence"),
    (["data=parquet"], "Missing mandatory value: data.path"),
    (["data=parquet", "data.path=/no/such/shards"], "is not a directory"),
    (["data=fineweb_edu", "data.num_shards=1"], "use data.num_shards="),
    (["data=fineweb_edu", "data.val_shard=middle"], "expected one of [dataset_last, downloaded_last]"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_is_refused_in_one_line(overrides, message):
    complaint = refusal(*overrides)
    assert message in complaint and "\n" not in complaint


@pytest.mark.parametrize("overrides", [["device=tpu"], ["model.depth=0"], ["data=parquet"]])
def test_a_dry_run_refuses_what_a_run_refuses(overrides, tmp_path):
    result = subprocess.run([sys.executable, "train.py", *overrides, "dry_run=true", f"hydra.run.dir={tmp_path}"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert result.stderr.strip() == f"error: {refusal(*overrides)}"
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_dry_run_imports_no_torch(tmp_path):
    result = subprocess.run([sys.executable, "-X", "importtime", "train.py", "model=d20", "dry_run=true",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "393,219,200" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "hydra" in imported and "torch" not in imported


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


# chat_eval is not chosen on its own: it fills eval.chat (eval=chat, stage=sft).
GROUPS = sorted(path.name for path in CONF_DIR.iterdir()
                if path.is_dir() and path.name not in ("hydra", "experiment", "sweep", "chat_eval"))
CHAT_STAGE = ["stage=sft", "init_from=runs/parent"]  # a dry run plans a stage without reading its parent


def companions(choice: str, tmp_path) -> list[str]:
    """What a choice needs beside it to make a whole run."""
    if choice == "data=parquet":
        return [f"data.path={tmp_path}"]
    if choice in ("stage=mid", "stage=sft", "stage=rl"):
        return ["init_from=runs/parent"]
    if choice == "budget=epochs":
        return CHAT_STAGE
    if choice.startswith("stage/mixture="):
        return [f"stage={choice.removeprefix('stage/mixture=').split('_')[-1]}", "init_from=runs/parent"]
    return []


@pytest.mark.parametrize("choice", [f"{group}={option}" for group in GROUPS for option in options(group)]
                         + [f"stage/mixture={option}" for option in options("stage/mixture")]
                         + [f"experiment={option}" for option in options("experiment")]
                         + [f"sweep={option}" for option in options("sweep")])
def test_every_config_composes_and_plans(choice, tmp_path):
    cfg = compose_config(*companions(choice, tmp_path), choice, "dry_run=true")
    plan = derived.plan(cfg)  # what the dry run prints
    assert plan.params["total"] > 0
    if cfg.budget.name == "epochs":  # counted once the mixture is loaded
        assert plan.num_iterations is None and cfg.stage.mixture and "epoch" in plan.report()
    else:
        assert plan.num_iterations >= 1
    group, option = choice.split("=")
    if group == "model":
        assert cfg.model.depth == int(option.removeprefix("d"))
    elif group in ("budget", "data", "dataloader", "optim", "stage"):
        assert cfg[group].name == option
    elif group == "stage/mixture":
        entries = [entry for split in ("train", "val") for entry in cfg.stage.mixture[split].values()]
        assert cfg.stage.mixture.train and cfg.stage.mixture.val and all(entry.task in TASKS for entry in entries)


def test_the_cpu_sweeps_share_the_tiny_cpu_preset():
    preset = compose_config("preset=tiny_cpu")
    for sweep in ("isoflop_cpu", "miniseries_cpu"):
        cfg = compose_config(f"sweep={sweep}")
        for group in ("model", "train", "wandb"):
            shared = {key: value for key, value in preset[group].items() if key != "depth"}
            assert {key: cfg[group][key] for key in shared} == shared
        assert cfg.data.vocab_size == preset.data.vocab_size == 512


@pytest.mark.parametrize("sweep", ["isoflop", "miniseries"])
def test_sweeps_score_core_once_at_the_end_on_every_example(sweep):
    cfg = compose_config(f"sweep={sweep}")
    assert cfg.eval.bundle == "core" and cfg.eval.core_max_per_task == -1
    last = derived.plan(cfg).num_iterations
    assert is_due(cfg.eval.core_every, last, last)
    assert not any(is_due(cfg.eval.core_every, step, last) for step in (1, 1000, 2000, last - 1))


def test_fineweb_shards_follow_from_the_plan():
    # The reference's own arithmetic (runs/speedrun.sh): 561M params x 20 tokens -> 370 shards.
    assert abs(derived.fineweb_shards_needed(561e6 * 20) - 370) <= 2
    plan = derived.plan(compose_config("experiment=speedrun"))
    tokens_held = (plan.fineweb_shards * derived.FINEWEB_CHARS_PER_SHARD * (1 - derived.BESTFIT_CROP_WASTE)
                   / derived.FINEWEB_CHARS_PER_TOKEN)
    assert plan.total_tokens <= tokens_held < 1.2 * plan.total_tokens and plan.fineweb_shards > 240
    complaint = refusal("experiment=speedrun", "data.num_shards=240")
    assert f"use data.num_shards={plan.fineweb_shards}" in complaint
    assert derived.plan(compose_config("experiment=speedrun", "data.num_shards=-1")).fineweb_shards == 1822
    isoflop = derived.plan(compose_config("sweep=isoflop", "model.depth=8", "budget.target_flops=1e19"))
    assert isoflop.fineweb_shards == derived.fineweb_shards_needed(isoflop.total_tokens) > 240


def test_validation_shard_is_the_datasets_last_or_the_last_downloaded(tmp_path):
    assert compose_config("data=fineweb_edu").data.val_shard == "dataset_last"
    assert shard_indices(3, "dataset_last") == [0, 1, 2, LAST_SHARD]
    assert shard_indices(3, "downloaded_last") == [0, 1, 2, 3]  # as the reference's `-n 4`
    for index in (0, 1, 2, 3, 4, LAST_SHARD):  # a shared download directory holding more than one run reads
        (tmp_path / shard_name(index)).write_text(str(index))
    view = _linked_view(tmp_path, shard_indices(3, "downloaded_last"))
    assert sorted(path.name for path in view.iterdir()) == [shard_name(i) for i in range(4)]
    assert Path(view / shard_name(3)).read_text() == "3"
