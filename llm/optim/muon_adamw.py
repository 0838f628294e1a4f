"""Muon for the weight matrices, AdamW for everything else, as one torch optimizer.

Every param group names its update rule with `kind`, and the optimizer pairs each group with a
small rule object that knows the rule's hyperparameters, lays out its state and steps the group:

- AdamWRule ('adamw': lr, betas, eps, weight_decay): AdamW with bias correction and decoupled
  weight decay; every parameter keeps its own step count and two moments.
- MuonRule ('muon': lr, momentum, ns_steps, beta2, weight_decay): the group's matrices share one
  shape, so they are stepped as one (count, rows, cols) stack whose buffers live in the state of
  the group's first parameter. One step: Nesterov momentum, Polar Express orthogonalisation,
  NorMuon's rebalancing of rows (or columns), then the move with cautious weight decay.

The hyperparameters stay in the param groups, where the schedules write them, and the rules read
them at every step. The arithmetic lives in kernels, plain functions of tensors that the
distributed optimizer runs on its shards too; their hyperparameters arrive as 0-D float32 CPU
tensors, so that under torch.compile a learning rate that changes every step is a graph input and
does not recompile. Compilation is used on CUDA only by default: on a CPU it costs far more time
than it saves, and AdamW runs PyTorch's fused kernel instead, which does in one pass what
compilation would fuse.
"""

import functools

import torch
from torch import Tensor

from llm.device import fast_bf16_matmul

# Polar Express coefficients (a, b, c) of the quintic x -> a x + b x^3 + c x^5 for each iteration,
# from Amsel et al., "The Polar Express" (arXiv:2505.16932), computed for 5 iterations with
# safety factor 2e-2 and cushion 2.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


# ---------------------------------------------------------------------------------------------
# Kernels

def adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor,
                 lr: Tensor, beta1: Tensor, beta2: Tensor, eps: Tensor, weight_decay: Tensor) -> None:
    """One AdamW step on `param` in place; `step` counts from 1."""
    param.mul_(1 - lr * weight_decay)  # decoupled: the decay does not pass through the moments
    for moment, sample, beta in ((exp_avg, grad, beta1), (exp_avg_sq, grad.square(), beta2)):
        moment.lerp_(sample, 1 - beta)
    # Both moments start at zero; dividing by (1 - beta^step) removes that bias early in training.
    unbiased_scale = (exp_avg_sq / (1 - beta2 ** step)).sqrt() + eps
    param.add_(exp_avg / unbiased_scale, alpha=-(lr / (1 - beta1 ** step)))


def fused_adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor,
                       lr: Tensor, beta1: Tensor, beta2: Tensor, eps: Tensor, weight_decay: Tensor) -> None:
    """adamw_update in one pass over memory, by PyTorch's fused AdamW kernel (the one behind
    torch.optim.AdamW(fused=True); same arithmetic). Uncompiled, adamw_update makes about ten
    passes and allocates a temporary per op: on a CPU that took 125 ms per 32768 x 384 embedding
    table against 9 ms here, a tenth of a training step at the reference's CPU shape."""
    torch._fused_adamw_([param], [grad], [exp_avg], [exp_avg_sq], [], [step.to(param.device)], lr=lr.item(), beta1=beta1.item(),
                        beta2=beta2.item(), weight_decay=weight_decay.item(), eps=eps.item(),
                        amsgrad=False, maximize=False)


def nesterov_direction(grads: Tensor, momentum_buffer: Tensor, momentum: Tensor) -> Tensor:
    """Fold `grads` into the momentum buffer, then look one step ahead along it (in `grads`' memory)."""
    momentum = momentum.to(grads.dtype)
    momentum_buffer.lerp_(grads, 1 - momentum)
    return grads.lerp_(momentum_buffer, momentum)


def polar_express(stack: Tensor, ns_steps: int, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Map each matrix U S V^T of a (K, rows, cols) stack to roughly U V^T.

    The coefficients push every singular value towards 1 quickly rather than exactly, which is all
    Muon needs, and the iteration is stable enough to run in bfloat16 (the default, as on GPUs);
    CPUs without bf16 matrix units run it in float32, which is both faster and more exact there.
    """
    x = stack.to(dtype)
    # Scale the spectral norm below 1 (the Frobenius norm bounds it), with a little margin.
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = stack.size(-2) > stack.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFICIENTS[:ns_steps]:
        # Work with the smaller of the two Gram matrices.
        gram = x.mT @ x if tall else x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + (x @ poly if tall else poly @ x)
    return x


def normuon_rescale(update: Tensor, second_moment: Tensor, beta2: Tensor, red_dim: int) -> Tensor:
    """NorMuon: even out the rows (or columns) of an orthogonalised update, keeping its norm.

    `second_moment` holds an EMA of each row's (red_dim=-1) or column's (red_dim=-2) mean squared
    update. Every row is divided by its RMS, then the whole matrix is scaled back to the Frobenius
    norm it had before, so only the balance between rows changes, not the step size.
    """
    beta2 = beta2.to(update.dtype)
    length = update.size(red_dim)
    mean_sq = update.float().square().mean(dim=red_dim, keepdim=True)
    norm_before = (mean_sq.sum(dim=(-2, -1), keepdim=True) * length).sqrt()
    second_moment.lerp_(mean_sq.to(second_moment.dtype), 1 - beta2)
    inv_rms = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = ((mean_sq * length) * inv_rms.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    scale = inv_rms * (norm_before / norm_after.clamp_min(1e-10))
    return update * scale.to(update.dtype)


def cautious_step(params: Tensor, update: Tensor, lr: Tensor, weight_decay: Tensor) -> None:
    """params -= lr * update, plus weight decay on only the coordinates that the update already
    moves towards zero, so the decay never fights the gradient. lr and wd take the update's dtype."""
    lr, weight_decay = lr.to(update.dtype), weight_decay.to(update.dtype)
    towards_zero = (update * params) >= 0
    params.sub_(lr * update + lr * weight_decay * params * towards_zero)


def muon_update(grads: Tensor, params: Tensor, momentum_buffer: Tensor, second_moment: Tensor,
                momentum: Tensor, lr: Tensor, weight_decay: Tensor, beta2: Tensor,
                ns_steps: int, red_dim: int, ortho_dtype: torch.dtype = torch.bfloat16) -> None:
    """One Muon step on a (K, rows, cols) stack of parameters in place. Overwrites `grads`."""
    direction = nesterov_direction(grads, momentum_buffer, momentum)
    orthogonal = polar_express(direction, ns_steps, ortho_dtype)
    cautious_step(params, normuon_rescale(orthogonal, second_moment, beta2, red_dim), lr, weight_decay)


@functools.cache
def compiled(kernel):
    """The fused, compiled version of a kernel (compiled lazily, on first call)."""
    return torch.compile(kernel, dynamic=False, fullgraph=True)


def as_scalar(value: float) -> Tensor:
    """A hyperparameter as a 0-D float32 CPU tensor, the form the kernels take."""
    return torch.tensor(value, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Rules: one per param group

def require_grads(group: dict) -> None:
    if any(p.grad is None for p in group["params"]):
        raise ValueError(f"a parameter of a {group['kind']} group has no gradient; run backward() "
                         "through every parameter before step(), or leave it out of the optimizer")


class AdamWRule:
    """AdamW for one group; `update` also serves a shard of a parameter, given the shard's state."""

    hyperparameters = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, fuse_by_compiling: bool):
        self.kernel = compiled(adamw_update) if fuse_by_compiling else fused_adamw_update

    def update(self, group: dict, param: Tensor, grad: Tensor, state: dict) -> None:
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        scalars = (state["step"], group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        self.kernel(param, grad, state["exp_avg"], state["exp_avg_sq"], *map(as_scalar, scalars))

    def step(self, group: dict, states: dict) -> None:
        for param in group["params"]:
            if param.grad is not None:  # unused this step: leave it and its moments alone
                self.update(group, param, param.grad, states[param])


class MuonRule:
    """Muon for one group of same-shape matrices, stepped as one stack.

    The stack's state is a momentum buffer per matrix and a factored second moment: one value per
    row of a tall (or square) matrix, else one per column, i.e. along the longer side.
    """

    hyperparameters = ("lr", "momentum", "ns_steps", "beta2", "weight_decay")

    def __init__(self, shape: torch.Size, fuse_by_compiling: bool, ortho_dtype: torch.dtype):
        self.rows, self.cols = shape
        self.red_dim = -1 if self.rows >= self.cols else -2
        self.lr_scale = max(1.0, self.rows / self.cols) ** 0.5  # tall matrices step sqrt(rows / cols) more
        self.ortho_dtype = ortho_dtype
        self.kernel = compiled(muon_update) if fuse_by_compiling else muon_update

    def new_state(self, like: Tensor, count: int) -> dict:
        moment_shape = (count, self.rows, 1) if self.red_dim == -1 else (count, 1, self.cols)
        return dict(momentum_buffer=like.new_zeros(count, self.rows, self.cols),
                    second_moment=like.new_zeros(moment_shape))

    def update(self, group: dict, grads: Tensor, stack: Tensor, state: dict, capacity: int) -> None:
        """Step `stack`, the first matrices of a state that has room for `capacity` of them."""
        if not state:
            state.update(self.new_state(stack, capacity))
        count = stack.shape[0]
        self.kernel(grads, stack, state["momentum_buffer"][:count], state["second_moment"][:count],
                    as_scalar(group["momentum"]), as_scalar(group["lr"] * self.lr_scale),
                    as_scalar(group["weight_decay"]), as_scalar(group["beta2"]),
                    group["ns_steps"], self.red_dim, self.ortho_dtype)

    def step(self, group: dict, states: dict) -> None:
        require_grads(group)
        params = group["params"]
        stack = torch.stack(params)
        self.update(group, torch.stack([p.grad for p in params]), stack, states[params[0]], len(params))
        torch._foreach_copy_(params, list(stack.unbind(0)))


RULES = {"adamw": AdamWRule, "muon": MuonRule}


def check_param_group(index: int, group: dict) -> None:
    kind = group.get("kind")
    if kind not in RULES:
        raise ValueError(f"param group {index}: kind must be one of {sorted(RULES)}, got {kind!r}; "
                         "set group['kind']")
    missing = [key for key in RULES[kind].hyperparameters if key not in group]
    if missing:
        raise ValueError(f"param group {index} ({kind}) lacks {missing}; add them to the group")
    if kind == "muon":
        shapes = sorted({tuple(p.shape) for p in group["params"]})
        if len(shapes) != 1 or len(shapes[0]) != 2:
            raise ValueError(f"param group {index} (muon) has shapes {shapes}; a muon group needs "
                             "2-D parameters of one shape, so make one group per shape")
        if not 1 <= group["ns_steps"] <= len(POLAR_EXPRESS_COEFFICIENTS):
            raise ValueError(f"param group {index} (muon): ns_steps={group['ns_steps']}; use 1 to "
                             f"{len(POLAR_EXPRESS_COEFFICIENTS)}, the iterations Polar Express has "
                             "coefficients for")


class MuonAdamW(torch.optim.Optimizer):
    """Single-process Muon + AdamW. See the module docstring for the group format.

    compile: wrap the kernels in torch.compile; None compiles when any parameter is on CUDA.
    ortho_dtype: the dtype of Muon's orthogonalisation; None picks bf16 where bf16 matmuls are fast.
    `rules[i]` steps `param_groups[i]`.
    """

    def __init__(self, param_groups: list[dict], compile: bool | None = None,
                 ortho_dtype: torch.dtype | None = None):
        super().__init__(param_groups, defaults={})
        for index, group in enumerate(self.param_groups):
            check_param_group(index, group)
        if compile is None:
            compile = any(p.is_cuda for group in self.param_groups for p in group["params"])
        if ortho_dtype is None:  # bf16 where bf16 matmuls are fast, as the reference does on GPUs
            device_type = self.param_groups[0]["params"][0].device.type
            ortho_dtype = torch.bfloat16 if fast_bf16_matmul(device_type) else torch.float32
        self.ortho_dtype = ortho_dtype
        self.rules = [AdamWRule(compile) if group["kind"] == "adamw"
                      else MuonRule(group["params"][0].shape, compile, ortho_dtype)
                      for group in self.param_groups]

    @torch.no_grad()
    def step(self) -> None:
        for group, rule in zip(self.param_groups, self.rules):
            rule.step(group, self.state)
