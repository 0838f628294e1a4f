"""Where a run executes: device, numeric precision, and the process group.

A run is one process per rank. Rank, world size and the rendezvous address come from torchrun's
environment or, with no torchrun, from Slurm's (one Slurm task = one rank), so a Slurm job of N
tasks trains data-parallel without a wrapper. gloo serves CPUs, nccl serves GPUs.
"""

import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from llm.config.derived import ConfigError
from llm.data.paths import base_dir
from llm.device import device_name, fast_bf16_matmul


@dataclass
class Runtime:
    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    compute_dtype: torch.dtype  # the autocast dtype; float32 means no autocast

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dtype_name(self) -> str:
        """The compute dtype as configs spell it: float32 or bfloat16."""
        return str(self.compute_dtype).removeprefix("torch.")

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def describe(self) -> str:
        return f"{device_name(self.device)} × {self.world_size}, {self.dtype_name}"


def _rank_environment() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun, else Slurm, else a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        # submitit's reading of Slurm's variables (node list included), whether or not submitit launched us.
        from submitit.slurm.slurm import SlurmJobEnvironment

        slurm = SlurmJobEnvironment()
        first = slurm.hostnames[0]
        # On the master's own node loopback always works, even where the node name does not resolve.
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1" if first == socket.gethostname() else first)
        # Every task of a job derives the same port from the job id, so no one has to publish it.
        os.environ.setdefault("MASTER_PORT", str(20000 + int(slurm.job_id) % 20000))
        return slurm.global_rank, slurm.local_rank, slurm.num_tasks
    return 0, 0, 1


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is visible: use device=cpu or device=auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but MPS is not available: use device=cpu or device=auto")
    if requested not in ("cpu", "mps"):
        raise ConfigError(f"device={requested!r} is not one of auto, cpu, cuda, mps")
    return torch.device(requested)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def pick_dtype(requested: str, device: torch.device, recorded: str | None = None) -> torch.dtype:
    """The compute dtype: float32 or bfloat16 as forced, or for auto the run's recorded one, else the machine's.

    auto means bf16 autocast where bf16 matmuls are fast (CUDA; CPUs with bf16 units), else fp32.
    A run keeps the dtype its first launch resolved (`recorded`, from identity.json): a later launch
    that would compute differently would not continue the same trajectory, so it is refused.
    Autocast only changes the dtype ops compute in: weights and optimizer state stay fp32 either way.
    """
    if requested not in ("auto", *DTYPES):
        raise ConfigError(f"dtype={requested!r} is not one of auto, float32, bfloat16")
    if recorded is None:
        if requested == "auto":
            return torch.bfloat16 if fast_bf16_matmul(device.type) else torch.float32
        return DTYPES[requested]
    if requested not in ("auto", recorded):
        raise ConfigError(f"this run computes in {recorded} (identity.json) but dtype={requested} was given: "
                          f"resume it with dtype=auto or dtype={recorded}")
    if requested == "auto" and recorded == "bfloat16" and not fast_bf16_matmul(device.type):
        raise ConfigError(f"this run computes in bfloat16 (identity.json) but this {device.type} has no fast bf16 "
                          "matmuls: resume it on such a machine, or pass dtype=bfloat16 to accept the slow path")
    return DTYPES[recorded]


def _persist_compile_cache(data_home: str | None) -> None:
    """Keep torch.compile's artefacts under the data home unless the user chose a place.

    Inductor's default is under /tmp, which clusters wipe or keep per node; in the data home the
    runs of a sweep (same shapes, same code) reuse each other's compiled kernels. Importing
    torch._dynamo writes that default into the environment, so holding the default counts as unset.
    Inductor reads the variable whenever it opens its cache, so setting it before the first compile
    is enough.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # ~2 s to import: only when starting

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base_dir(data_home) / "torchinductor")


def start(device: str, dtype: str, seed: int, data_home: str | None = None,
          recorded_dtype: str | None = None) -> Runtime:
    """Join the process group (if there is one), pick the device and precision, seed the RNGs.

    data_home is the configured base_dir (None: $LLM_HOME, then the user cache dir);
    recorded_dtype is the compute dtype a resumed run's first launch chose (see pick_dtype).
    """
    _persist_compile_cache(data_home)
    rank, local_rank, world_size = _rank_environment()
    target = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                device_id=target if target.type == "cuda" else None)
    if target.type == "cuda":
        torch.set_float32_matmul_precision("high")  # tf32 for the few fp32 matmuls left
    compute_dtype = pick_dtype(dtype, target, recorded_dtype)
    if world_size > 1:
        compute_dtype = _rank_zeros_choice(compute_dtype, target)
    torch.manual_seed(seed)  # last: nothing above may draw from the generator the weights come from
    return Runtime(target, rank, local_rank, world_size, compute_dtype)


def _rank_zeros_choice(compute_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Rank 0's dtype for every rank: dtype=auto is decided on each node, nodes of a job may differ,
    and ranks that autocast differently would not be training one model."""
    is_bf16 = torch.tensor([int(compute_dtype == torch.bfloat16)], device=device)
    dist.broadcast(is_bf16, src=0)
    return torch.bfloat16 if is_bf16.item() else torch.float32


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
