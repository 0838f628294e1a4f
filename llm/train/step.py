"""One optimizer step: forward and backward over the accumulation micro-batches, then update.

The training loop and the benchmark both run exactly this, so measured speed is training speed.
"""

import torch
import torch.distributed as dist


def train_step(step_model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches, grad_accum_steps: int,
               runtime) -> float:
    """Returns the loss averaged over micro-batches (and ranks)."""
    loss_sum = torch.zeros((), device=runtime.device)
    for _ in range(grad_accum_steps):
        inputs, targets = next(batches)
        with runtime.autocast():
            loss = step_model(inputs, targets)
        loss_sum += loss.detach()
        # Gradients add up over backward calls, so scale each to make the sum a mean.
        (loss / grad_accum_steps).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if runtime.distributed:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    return loss_sum.item() / grad_accum_steps
