"""Stop cleanly when the scheduler asks: checkpoint at the next step boundary, then exit.

Slurm sends SIGUSR2 (as configured with --signal) before a time limit or a preemption, and SIGTERM
before killing a job; torchrun forwards SIGTERM to its workers. Either one only sets a flag here:
the loop finishes the step in flight, saves, and leaves. With several ranks the flag is agreed on
collectively, so that every rank stops at the same step and the checkpoint is consistent.
"""

import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopSignal:
    def __init__(self):
        self.received: int | None = None
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = signum

    def requested(self, runtime) -> bool:
        flag = torch.tensor(float(self.received is not None), device=runtime.device)
        if runtime.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
