"""Mixed precision on CPU: a short run under bf16 autocast follows the fp32 loss curve."""

import pytest
import torch

from llm.config import compose_run, derived
from llm.data.paths import base_dir
from llm.train import build
from llm.train import runtime as runtimes
from llm.train.step import train_step
from tests.conftest import TINY_RUN

STEPS = 30
# Half TINY_RUN's width and one micro-batch per step: bf16 matmuls can be ~100x slower than fp32
# on CPUs without bf16 units, and this test runs there too.
SHAPE = [*TINY_RUN, "model.aspect_ratio=32", "train.total_batch_size=256"]
# Measured on an AVX2 EPYC: the two 30-step curves differ by at most 3.6e-4 (losses near 6.2);
# the margin leaves room for other CPUs' kernels to round differently. Over so few steps even bf16
# weights stay within it (4.5e-4), so the dtypes of weights and optimizer state are checked directly.
LOSS_TOLERANCE = 2e-3


@pytest.fixture
def one_thread():
    """Matmuls this small gain nothing from a second thread, while on a busy machine OpenMP's
    barriers between threads cost seconds per step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_briefly(dtype: str) -> tuple[list[float], torch.nn.Module, torch.optim.Optimizer]:
    """STEPS training steps of the SHAPE config on the embedded corpus: (losses, model, optimizer)."""
    cfg = compose_run([*SHAPE, f"dtype={dtype}"])
    runtime = runtimes.start(cfg.device, cfg.dtype, cfg.seed, cfg.base_dir)
    base = base_dir(cfg.base_dir)
    corpus = build.corpus(cfg, base)
    tokenizer = build.tokenizer(cfg.data, corpus, base)
    plan = derived.plan(cfg, runtime.world_size, tokenizer.vocab_size)
    model = build.model(plan.shape, cfg.attention, runtime)
    optimizer = build.optimizer(model, plan, cfg.optim, runtime)
    batches = build.loader(cfg, tokenizer, corpus, "train", runtime)
    losses = [train_step(model, optimizer, batches, plan.grad_accum_steps, runtime) for _ in range(STEPS)]
    return losses, model, optimizer


def test_bf16_autocast_follows_the_fp32_loss_curve(llm_home, one_thread):
    fp32, _, _ = train_briefly("float32")
    bf16, model, optimizer = train_briefly("bfloat16")
    assert bf16 != fp32, "bf16 autocast changed nothing: it was not applied"
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < LOSS_TOLERANCE
    assert bf16[-1] < bf16[0] - 0.05  # and it learns
    # Autocast only changes what ops compute in: weights and optimizer state stay fp32.
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    state = [value for entry in optimizer.state.values() for value in entry.values() if torch.is_tensor(value)]
    assert state and all(value.dtype == torch.float32 for value in state if value.is_floating_point())
