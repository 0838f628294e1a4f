"""Stop cleanly when the scheduler asks: checkpoint at the next step boundary, then hand over.

Slurm sends SIGUSR2 (as configured with --signal) before a time limit or a preemption, and SIGTERM
before killing a job; torchrun forwards SIGTERM to its workers. Either one only sets a flag here:
the loop finishes the step in flight, saves, and leaves. With several ranks the flag is agreed on
collectively, so that every rank stops at the same step and the checkpoint is consistent.

Whatever handler was installed before (submitit's, which requeues the job) is not lost: once the
checkpoint is on disk, `hand_over` calls it as if the signal had just arrived.
"""

import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopSignal:
    def __init__(self):
        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = signum

    def requested(self, runtime) -> bool:
        flag = torch.tensor(float(self.received is not None), device=runtime.device)
        if runtime.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def hand_over(self) -> None:
        """Restore the earlier handlers and, if a signal stopped the run, let the earlier one act on it."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        handler = self.previous.get(self.received)
        if self.received is not None and callable(handler):
            handler(self.received, None)
