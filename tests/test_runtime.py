"""Where a run executes: the precision dtype=auto picks, and where compiled kernels are cached."""

import os

import pytest
import torch
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from llm import device
from llm.config.derived import ConfigError
from llm.device import fast_bf16_matmul
from llm.train import runtime as runtimes


@pytest.mark.parametrize("fast", [True, False], ids=["bf16_units", "no_bf16_units"])
def test_auto_is_bf16_exactly_where_bf16_matmuls_are_fast(monkeypatch, fast):
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: fast)
    assert runtimes.start("cpu", "auto", 0).compute_dtype == (torch.bfloat16 if fast else torch.float32)
    assert runtimes.start("cpu", "float32", 0).compute_dtype == torch.float32
    assert runtimes.start("cpu", "bfloat16", 0).compute_dtype == torch.bfloat16


def test_this_machines_flags_decide_auto():
    expected = torch.bfloat16 if device.BF16_CPU_FLAGS & device.cpu_flags() else torch.float32
    assert runtimes.start("cpu", "auto", 0).compute_dtype == expected


@pytest.mark.parametrize("line, fast", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile", True),  # Sapphire Rapids
    ("flags\t\t: fpu sse2 avx2 fma", False),  # AMD Zen 3: bf16 matmuls ~100x slower than fp32
    ("Features\t: fp asimd bf16 i8mm", True),  # ARM with the BF16 extension
], ids=["amx", "avx2_only", "arm_bf16"])
def test_cpu_flags_say_whether_bf16_is_fast(tmp_path, line, fast):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: x\n{line}\n\nprocessor\t: 1\n{line}\n")
    assert bool(device.BF16_CPU_FLAGS & device.cpu_flags(cpuinfo)) is fast
    assert device.cpu_flags(tmp_path / "absent") == frozenset()


def test_starting_draws_nothing_from_the_seeded_generator():
    """seed=42 must initialise the same weights whatever dtype=auto resolves to."""
    fast_bf16_matmul.cache_clear()  # the first answer of a process is the one that could draw
    torch.manual_seed(7)
    expected = torch.rand(4)
    for dtype in ("auto", "float32", "bfloat16"):
        runtimes.start("cpu", dtype, 7)
        assert torch.equal(torch.rand(4), expected), dtype


@pytest.mark.parametrize("fast", [True, False], ids=["bf16_units", "no_bf16_units"])
def test_a_recorded_dtype_is_kept_whatever_the_machine_says(monkeypatch, fast):
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: fast)
    assert runtimes.start("cpu", "auto", 0, recorded_dtype="float32").compute_dtype == torch.float32
    assert runtimes.start("cpu", "bfloat16", 0, recorded_dtype="bfloat16").compute_dtype == torch.bfloat16
    if fast:
        assert runtimes.start("cpu", "auto", 0, recorded_dtype="bfloat16").compute_dtype == torch.bfloat16


def test_a_launch_that_cannot_honour_the_recorded_dtype_is_refused(monkeypatch):
    monkeypatch.setattr(runtimes, "fast_bf16_matmul", lambda device_type: False)
    with pytest.raises(ConfigError, match="computes in bfloat16 .* dtype=bfloat16"):
        runtimes.pick_dtype("auto", torch.device("cpu"), "bfloat16")
    with pytest.raises(ConfigError, match="dtype=float32 was given: resume it with dtype=auto or dtype=bfloat16"):
        runtimes.pick_dtype("float32", torch.device("cpu"), "bfloat16")
    with pytest.raises(ConfigError, match="dtype='float16' is not one of"):
        runtimes.pick_dtype("float16", torch.device("cpu"))


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


@pytest.mark.parametrize("nodes, master", [("{host}", "127.0.0.1"), ("node[03-04],gpu7", "node03")],
                         ids=["master_is_this_node", "compressed_node_list"])
def test_a_slurm_task_is_a_rank_and_every_task_finds_the_same_master(monkeypatch, nodes, master):
    import socket

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    slurm = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_JOB_NODELIST": nodes.format(host=socket.gethostname())}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert runtimes._rank_environment() == (3, 1, 4)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == (master, "21234")
