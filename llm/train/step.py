"""One optimizer step: forward and backward over the accumulation micro-batches, then update.

The loss of a micro-batch is the stage's objective: next-token cross-entropy, or for RL the policy
gradient loss of sampled replies (llm.train.rollouts).

The training loop and the benchmark both run exactly this, so measured speed is training speed.
"""

import torch
import torch.distributed as dist


def next_token_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """The mean cross-entropy of a batch of (inputs, targets): every stage's objective but RL's."""
    inputs, targets = batch
    return model(inputs, targets)


def train_step(step_model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches, grad_accum_steps: int,
               runtime, objective=next_token_loss) -> float:
    """Returns the loss averaged over micro-batches (and ranks); `objective(model, batch)` is the loss of one."""
    loss_sum = torch.zeros((), device=runtime.device)
    for _ in range(grad_accum_steps):
        batch = next(batches)
        with runtime.autocast():
            loss = objective(step_model, batch)
        loss_sum += loss.detach()
        # Gradients add up over backward calls, so scale each to make the sum a mean.
        (loss / grad_accum_steps).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if runtime.distributed:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    return loss_sum.item() / grad_accum_steps
