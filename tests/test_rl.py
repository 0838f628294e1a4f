"""The RL stage: its advantage and loss by hand, a run from a tiny SFT parent, exact resume, refusals.

The parents are trained here in a few seconds: a tiny base model with a 128-token context (room for
a spelling question and a short reply) and a two-step SFT run from it. Such a model never answers
a spelling question right, so the in-process runs use `vowel_start`, a task defined below whose
reward (the reply starts with a vowel) a random model earns about half the time: the advantages,
and so the updates, are then not zero. The run through train.py is on the real offline task.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llm.config import compose_run
from llm.tasks import registry
from llm.tasks.base import Task
from llm.train import loop
from llm.train.rollouts import Rollouts, advantages, policy_gradient_loss
from tests.conftest import TINY_RUN, run_train
from tests.test_loop import StopAfter, final_weights, metrics
from tests.test_stages import files_of, refused

PARENT = [*TINY_RUN, "model.sequence_len=128"]
SFT = [*PARENT, "stage=sft", "budget=iterations", "budget.num_iterations=2", "stage.examples_per_step=4",
       "eval.every=-1", "eval.chat.every=-1", "~stage.mixture.train.gsm_symbolic"]
RL = [*TINY_RUN, "stage=rl", "budget=iterations", "budget.num_iterations=4", "stage.examples_per_step=2",
      "stage.rollout.num_samples=4", "stage.rollout.max_new_tokens=12", "eval.pass_at_k.every=2",
      "eval.pass_at_k.max_problems=3", "eval.pass_at_k.num_samples=2", "eval.pass_at_k.max_new_tokens=12",
      "checkpoint.every=2", "checkpoint.keep=10"]
VOWEL = ["~stage.mixture.train.spelling_bee", "~stage.mixture.val.spelling_bee",
         "+stage.mixture.train.vowel={task: vowel_start, size: 50}",
         "+stage.mixture.val.vowel={task: vowel_start, size: 3}"]


class VowelStart(Task):
    """Say any word; a reply that starts with a vowel earns 1."""

    name = "vowel_start"

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        return {"messages": [{"role": "user", "content": f"Say a word ({index})"},
                             {"role": "assistant", "content": "apple"}]}

    def evaluate(self, conversation: dict, completion: str) -> int:
        return int(completion[:1].lower() in set("aeiou"))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, llm_home) -> Path:
    root = tmp_path_factory.mktemp("rl_parents")
    loop.train(compose_run([*PARENT, "budget.num_iterations=4"]), root / "base")
    loop.train(compose_run([*SFT, f"init_from={root / 'base'}"]), root / "sft")
    return root / "sft"


@pytest.fixture
def vowel_task(monkeypatch):
    monkeypatch.setitem(registry.TASKS, "vowel_start", VowelStart)


def test_advantage_and_loss_by_hand():
    assert advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])).tolist() == [0.5, -0.5, -0.5, 0.5]

    class Uniform(torch.nn.Module):
        """Equal logits over 4 tokens: every sampled token has log-probability -log 4."""

        def forward(self, inputs, targets, loss_reduction):
            logits = torch.zeros(*inputs.shape, 4, requires_grad=True)
            return F.cross_entropy(logits.view(-1, 4), targets.reshape(-1), ignore_index=-1, reduction=loss_reduction)

    targets = torch.tensor([[1, 2, 3], [-1, 0, -1], [-1, -1, -1], [2, -1, 1]])  # 3, 1, 0 and 2 sampled tokens
    batch = Rollouts(torch.zeros(4, 3, dtype=torch.long), targets, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # -(sum of advantage × log p over sampled tokens) / sampled tokens = -(-log 4 × (1.5 - 0.5 + 0 + 1)) / 6
    assert policy_gradient_loss(Uniform(), batch).item() == pytest.approx(math.log(4) / 3)


def test_loss_of_a_real_model_weights_each_sampled_token_by_its_reply_advantage(sft_run):
    from llm.train.load import load_model

    model, _, _ = load_model(sft_run, "cpu")
    inputs = torch.randint(0, 500, (3, 6))
    targets = torch.randint(0, 500, (3, 6))
    targets[0, :2] = targets[2, 4:] = -1  # a prompt and padding
    gains = torch.tensor([1.0, -0.25, -0.75])
    log_p = model(inputs).log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = -(log_p * gains[:, None] * (targets >= 0)).sum() / (targets >= 0).sum()
    loss = policy_gradient_loss(model, Rollouts(inputs, targets, gains))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_an_rl_run_rewards_sampled_replies_and_resumes_exactly(sft_run, vowel_task, tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    config = [*RL, *VOWEL, f"init_from={sft_run}"]
    summary = loop.train(compose_run(config), straight)
    assert summary["status"] == "done" and summary["step"] == 4
    records = metrics(straight)
    assert [r["step"] for r in records if "reward" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "pass@2" in r] == [0, 2, 4]
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 4]  # TINY_RUN's eval.every, on the val task
    rewards = [r["reward"] for r in records if "reward" in r]
    assert all(0 <= r <= 1 for r in rewards) and 0 < sum(rewards) < 4  # mixed: the advantages are not all 0
    assert all(r["pass@1"] <= r["pass@2"] for r in records if "pass@1" in r)
    parent_weights = final_weights(sft_run)
    assert any(not torch.equal(parent_weights[k], w) for k, w in final_weights(straight).items())
    identity = json.loads((straight / "identity.json").read_text())
    assert identity["stage"] == "rl" and identity["parent"]["stage"] == "sft"

    monkeypatch.setattr(loop, "StopSignal", lambda: StopAfter(3))
    assert loop.train(compose_run(config), stopped)["status"] == "preempted"
    monkeypatch.setattr(loop, "StopSignal", lambda: StopAfter(10**6))
    assert loop.train(compose_run(config), stopped)["status"] == "done"
    timeless = lambda run: [{k: v for k, v in r.items() if k not in ("dt", "tok_per_sec", "mfu", "eta_sec")}
                            for r in metrics(run)]
    assert timeless(stopped) == timeless(straight)
    a, b = final_weights(straight), final_weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_train_py_runs_rl_on_the_offline_task_with_the_run_contract(sft_run, tmp_path, llm_home):
    run = tmp_path / "rl"
    run_train(run, *RL, f"init_from={sft_run}", home=llm_home)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    records = metrics(run)
    assert all("reward" in r and "sequence_length" in r for r in records if "loss" in r)
    assert [r["step"] for r in records if "pass@1" in r] == [0, 2, 4]
    config = (run / "config.yaml").read_text()
    assert "spellingbee" not in config and "task: spelling_bee" in config and "init_lr_frac: 0.05" in config
    before = files_of(run)
    line = refused(tmp_path / "other", *RL, f"init_from={sft_run}", "stage.rollout.num_samples=6", home=llm_home)
    assert "not a multiple of train.device_batch_size=4" in line
    result = run_train(run, *RL, f"init_from={sft_run}", "stage.rollout.temperature=0.5", home=llm_home,
                       check=False)
    assert result.returncode == 2 and "differs in stage" in result.stderr
    assert files_of(run) == before


def test_rl_refuses_a_base_parent_and_tasks_that_give_no_reward(sft_run, tmp_path, llm_home):
    base = sft_run.parent / "base"
    assert "is a base run" in refused(tmp_path / "a", *RL, f"init_from={base}", home=llm_home)
    chatter = ["~stage.mixture.train.spelling_bee", "+stage.mixture.train.chat={task: chatterbot, split: train}"]
    assert "cannot score a free-form reply" in refused(tmp_path / "b", *RL, f"init_from={sft_run}", *chatter,
                                                       home=llm_home)
    two = ["+stage.mixture.train.more={task: spelling_bee, size: 10, split: train}"]
    assert "names exactly one task (it names 2)" in refused(tmp_path / "c", *RL, f"init_from={sft_run}", *two,
                                                            home=llm_home)


def test_experiment_cpu_sizes_rl_for_two_cores_and_keeps_the_reference_rates():
    reference, cpu = (compose_run(["stage=rl", "init_from=runs/sft", *extra]) for extra in ([], ["experiment=cpu"]))
    assert (reference.stage.examples_per_step, reference.stage.rollout.num_samples, reference.budget.name) == \
        (16, 16, "epochs")
    assert (cpu.stage.examples_per_step, cpu.stage.rollout.num_samples, cpu.budget.num_iterations) == (8, 8, 60)
    assert cpu.train.device_batch_size == reference.train.device_batch_size == 8
    assert cpu.optim == reference.optim and cpu.stage.init_lr_frac == 0.05
    # stage=rl's sizes under experiment=cpu only: the other stages keep experiment=cpu's own.
    assert compose_run(["stage=sft", "init_from=runs/x", "experiment=cpu"]).train.device_batch_size == 8
