"""Muon for the weight matrices, AdamW for everything else, as one torch optimizer.

Each param group names its update rule with `kind`:

- 'adamw' (lr, betas, eps, weight_decay): AdamW with bias correction and decoupled weight decay,
  applied to each parameter on its own.
- 'muon' (lr, momentum, ns_steps, beta2, weight_decay): every parameter of the group has the same
  2-D shape, so the group is stacked into one (K, rows, cols) tensor and updated in one go:
  Nesterov momentum, then Polar Express orthogonalisation, then NorMuon's per-row (or per-column)
  second-moment normalisation, then the step with cautious weight decay.

The two update rules are plain functions of tensors so that the distributed optimizer can run them
on its shards. Their hyperparameters arrive as 0-D float32 CPU tensors: torch.compile then treats
them as graph inputs, so a learning rate that changes every step does not trigger a recompile.
Compilation is used on CUDA only by default: on a CPU it costs far more time than it saves, and
AdamW runs PyTorch's fused kernel instead, which does in one pass what compilation would fuse.
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

REQUIRED_GROUP_KEYS = {
    "adamw": ("lr", "betas", "eps", "weight_decay"),
    "muon": ("lr", "momentum", "ns_steps", "beta2", "weight_decay"),
}


def adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor,
                 lr: Tensor, beta1: Tensor, beta2: Tensor, eps: Tensor, weight_decay: Tensor) -> None:
    """One AdamW step on `param` in place; `step` counts from 1."""
    param.mul_(1 - lr * weight_decay)  # decoupled: the decay does not pass through the moments
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    # Both moments start at zero; dividing by (1 - beta^step) removes that bias early in training.
    first_correction = 1 - beta1 ** step
    second_correction = 1 - beta2 ** step
    denom = (exp_avg_sq / second_correction).sqrt() + eps
    param.add_(exp_avg / denom, alpha=-(lr / first_correction))


def fused_adamw_update(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor,
                       lr: Tensor, beta1: Tensor, beta2: Tensor, eps: Tensor, weight_decay: Tensor) -> None:
    """adamw_update in one pass over memory, by PyTorch's fused AdamW kernel (the one behind
    torch.optim.AdamW(fused=True); same arithmetic). Uncompiled, adamw_update makes about ten
    passes and allocates a temporary per op: on a CPU that took 125 ms per 32768 x 384 embedding
    table against 9 ms here, a tenth of a training step at the reference's CPU shape."""
    torch._fused_adamw_([param], [grad], [exp_avg], [exp_avg_sq], [], [step.to(param.device)], lr=lr.item(), beta1=beta1.item(),
                        beta2=beta2.item(), weight_decay=weight_decay.item(), eps=eps.item(),
                        amsgrad=False, maximize=False)


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


def muon_update(grads: Tensor, params: Tensor, momentum_buffer: Tensor, second_moment: Tensor,
                momentum: Tensor, lr: Tensor, weight_decay: Tensor, beta2: Tensor,
                ns_steps: int, red_dim: int, ortho_dtype: torch.dtype = torch.bfloat16) -> None:
    """One Muon step on a (K, rows, cols) stack of parameters in place. Overwrites `grads`."""
    momentum = momentum.to(grads.dtype)
    momentum_buffer.lerp_(grads, 1 - momentum)
    nesterov = grads.lerp_(momentum_buffer, momentum)  # look ahead along the momentum
    update = polar_express(nesterov, ns_steps, ortho_dtype)
    update = normuon_rescale(update, second_moment, beta2, red_dim)
    # Cautious weight decay: shrink only the coordinates that the update already moves towards
    # zero, so the decay never fights the gradient. lr and wd take the update's dtype.
    lr = lr.to(update.dtype)
    weight_decay = weight_decay.to(update.dtype)
    agrees = (update * params) >= 0
    params.sub_(lr * update + lr * weight_decay * params * agrees)


@functools.cache
def compiled(update_fn):
    """The fused, compiled version of an update function (compiled lazily, on first call)."""
    return torch.compile(update_fn, dynamic=False, fullgraph=True)


def as_scalar(value: float) -> Tensor:
    """A hyperparameter as a 0-D float32 CPU tensor, the form the update functions take."""
    return torch.tensor(value, dtype=torch.float32)


def muon_lr(group: dict, shape: torch.Size) -> float:
    """Muon's learning rate for one matrix shape: tall matrices step sqrt(rows / cols) times more."""
    return group["lr"] * max(1.0, shape[-2] / shape[-1]) ** 0.5


def check_param_groups(param_groups: list[dict]) -> None:
    for index, group in enumerate(param_groups):
        kind = group.get("kind")
        if kind not in REQUIRED_GROUP_KEYS:
            raise ValueError(f"param group {index}: kind must be one of {sorted(REQUIRED_GROUP_KEYS)}, "
                             f"got {kind!r}; set group['kind']")
        missing = [key for key in REQUIRED_GROUP_KEYS[kind] if key not in group]
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


def require_grads(group: dict) -> None:
    if any(p.grad is None for p in group["params"]):
        raise ValueError(f"a parameter of a {group['kind']} group has no gradient; run backward() "
                         "through every parameter before step(), or leave it out of the optimizer")


class MuonAdamW(torch.optim.Optimizer):
    """Single-process Muon + AdamW. See the module docstring for the group format.

    compile: wrap the update functions in torch.compile; None compiles when any parameter is on CUDA.
    ortho_dtype: the dtype of Muon's orthogonalisation; None picks bf16 where bf16 matmuls are fast.
    """

    def __init__(self, param_groups: list[dict], compile: bool | None = None,
                 ortho_dtype: torch.dtype | None = None):
        super().__init__(param_groups, defaults={})
        check_param_groups(self.param_groups)
        if compile is None:
            compile = any(p.is_cuda for group in self.param_groups for p in group["params"])
        if ortho_dtype is None:  # bf16 where bf16 matmuls are fast, as the reference does on GPUs
            device_type = self.param_groups[0]["params"][0].device.type
            ortho_dtype = torch.bfloat16 if fast_bf16_matmul(device_type) else torch.float32
        self.ortho_dtype = ortho_dtype
        self._adamw_update = compiled(adamw_update) if compile else fused_adamw_update
        self._muon_update = compiled(muon_update) if compile else muon_update

    def _adamw_step(self, group: dict, param: Tensor, grad: Tensor, state: dict) -> None:
        """AdamW on `param`, which may be a shard of a parameter; `state` must belong to it alone."""
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        self._adamw_update(param, grad, state["exp_avg"], state["exp_avg_sq"], as_scalar(state["step"]),
                           as_scalar(group["lr"]), as_scalar(beta1), as_scalar(beta2),
                           as_scalar(group["eps"]), as_scalar(group["weight_decay"]))

    def _muon_step(self, group: dict, grads: Tensor, params: Tensor, state: dict, buffer_len: int) -> None:
        """Muon on a stack of params; the group's state holds buffers for `buffer_len` matrices,
        of which the first len(params) belong to this stack."""
        rows, cols = params.shape[-2:]
        # The second moment is factored: one value per row of a tall (or square) matrix, else
        # one per column, i.e. along the longer side.
        red_dim = -1 if rows >= cols else -2
        if not state:
            state["momentum_buffer"] = params.new_zeros(buffer_len, rows, cols)
            moment_shape = (buffer_len, rows, 1) if red_dim == -1 else (buffer_len, 1, cols)
            state["second_moment"] = params.new_zeros(moment_shape)
        count = params.shape[0]
        self._muon_update(grads, params, state["momentum_buffer"][:count], state["second_moment"][:count],
                          as_scalar(group["momentum"]), as_scalar(muon_lr(group, params.shape)),
                          as_scalar(group["weight_decay"]), as_scalar(group["beta2"]),
                          group["ns_steps"], red_dim, self.ortho_dtype)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = group["params"]
            if group["kind"] == "adamw":
                for p in params:
                    if p.grad is not None:  # unused this step: leave it and its moments alone
                        self._adamw_step(group, p, p.grad, self.state[p])
            else:
                require_grads(group)
                stacked = torch.stack(params)
                # The group's buffers live in the state of its first parameter.
                self._muon_step(group, torch.stack([p.grad for p in params]), stacked,
                                self.state[params[0]], len(params))
                torch._foreach_copy_(params, list(stacked.unbind(0)))
