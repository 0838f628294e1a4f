"""Where a run executes: the precision dtype=auto picks, and where compiled kernels are cached."""

import os

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from llm.device import fast_bf16_matmul
from llm.train import runtime as runtimes


@pytest.mark.parametrize("fast", [True, False], ids=["bf16_units", "no_bf16_units"])
def test_auto_is_bf16_exactly_where_bf16_matmuls_are_fast(monkeypatch, fast):
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: fast)
    assert runtimes.start("cpu", "auto", 0).compute_dtype == (torch.bfloat16 if fast else torch.float32)
    assert runtimes.start("cpu", "float32", 0).compute_dtype == torch.float32
    assert runtimes.start("cpu", "bfloat16", 0).compute_dtype == torch.bfloat16


def test_this_machines_measurement_decides_auto():
    expected = torch.bfloat16 if fast_bf16_matmul("cpu") else torch.float32
    assert runtimes.start("cpu", "auto", 0).compute_dtype == expected


# torch's own default counts as unset: importing torch._dynamo writes it into the environment.
@pytest.mark.parametrize("chosen", [None, default_cache_dir(), "/somewhere/else"],
                         ids=["unset", "torch_default", "user_choice"])
def test_compile_cache_goes_under_the_data_home_unless_set(monkeypatch, tmp_path, chosen):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    if chosen is not None:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", chosen)
    runtimes.start("cpu", "float32", 0, str(tmp_path))
    user_choice = chosen not in (None, default_cache_dir())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == (chosen if user_choice else str(tmp_path / "torchinductor"))
