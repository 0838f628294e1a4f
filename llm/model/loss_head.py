"""The training loss head: lm_head, soft-cap and cross-entropy, a chunk of rows at a time.

Taken whole, the head materialises the logits of every row several times over: the matmul's output,
its fp32 copy, the soft-capped values, the softmax and its gradient, each B·T × vocab; at 32 rows of
512 tokens and a 32k vocabulary that is 2 GB per fp32 copy. Here the forward keeps only each row's
log-sum-exp, and the backward recomputes one chunk's logits at a time from the hidden states, so
the peak is one chunk of logits. The cost is a second lm_head matmul per chunk.

The arithmetic is the plain head's: the matmul in the autocast dtype (bf16 on fast hardware, else
the inputs' dtype), then soft-cap, softmax and loss in fp32; targets of -1 are ignored and the loss
is the mean over the rest. The weight's gradient is accumulated over chunks in fp32.
"""

import torch

IGNORE_INDEX = -1
# The peak is one chunk, an eighth of the whole; more chunks would shrink it further, but under
# torch.compile the loop unrolls and each chunk's kernels are compiled anew (with 32 chunks the
# reference's CPU shape was still compiling after 9 minutes, where the whole-matrix head took 3).
CHUNKS = 8


def chunked_softcap_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  vocab_size: int, softcap: float, chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of softcap·tanh(hidden @ weight[:vocab_size].T / softcap) against targets.

    hidden is (..., model_dim), targets the matching (...) token ids; weight may have padding rows
    past vocab_size, which take no part (and get zero gradient). chunk_rows defaults to a CHUNKS-th
    of the rows.
    """
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    rows = chunk_rows or -(-targets.numel() // CHUNKS)
    return _ChunkedSoftcapCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, targets.reshape(-1),
                                             vocab_size, softcap, rows, compute_dtype)


def _chunks(total: int, size: int):
    return [(start, min(start + size, total)) for start in range(0, total, size)]


class _ChunkedSoftcapCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, softcap, chunk_rows, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are explicit
            inputs, classes = hidden.to(compute_dtype), weight[:vocab_size].to(compute_dtype)
            valid = targets != IGNORE_INDEX
            log_normalisers = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
            loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start, end in _chunks(targets.numel(), chunk_rows):
                # In place where it can be: eager mode would otherwise allocate a chunk-sized tensor per op.
                capped = (inputs[start:end] @ classes.T).float().div_(softcap).tanh_().mul_(softcap)
                log_normalisers[start:end] = torch.logsumexp(capped, dim=-1)
                # Ignored rows look up class 0 and are then masked out of the sum.
                target_logits = capped.gather(1, targets[start:end].clamp(min=0).unsqueeze(1)).squeeze(1)
                loss_sum += torch.where(valid[start:end], log_normalisers[start:end] - target_logits, 0.0).sum()
            valid_count = valid.sum()
        ctx.save_for_backward(hidden, weight, targets, log_normalisers, valid_count)
        ctx.vocab_size, ctx.softcap, ctx.chunk_rows, ctx.compute_dtype = vocab_size, softcap, chunk_rows, compute_dtype
        return loss_sum / valid_count  # no valid target: nan, as the plain mean gives

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, log_normalisers, valid_count = ctx.saved_tensors
        vocab_size, softcap = ctx.vocab_size, ctx.softcap
        with torch.autocast(hidden.device.type, enabled=False):
            inputs, classes = hidden.to(ctx.compute_dtype), weight[:vocab_size].to(ctx.compute_dtype)
            # d loss / d capped logit of a row = (softmax - one_hot(target)) · grad / valid_count, 0 if ignored.
            row_scale = torch.where(targets != IGNORE_INDEX, grad_loss / valid_count, 0.0)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for start, end in _chunks(targets.numel(), ctx.chunk_rows):
                squashed = (inputs[start:end] @ classes.T).float().div_(softcap).tanh_()
                grad_capped = (squashed * softcap).sub_(log_normalisers[start:end, None]).exp_()  # the softmax
                target_column = targets[start:end].clamp(min=0).unsqueeze(1)
                grad_capped.scatter_add_(1, target_column, -torch.ones_like(target_column, dtype=grad_capped.dtype))
                # Through the soft-cap: d(c·tanh(z/c))/dz = 1 - tanh²; then back to the matmul's dtype.
                grad_capped.mul_(row_scale[start:end, None]).mul_(squashed.square_().neg_().add_(1))
                grad_logits = grad_capped.to(ctx.compute_dtype)
                grad_hidden[start:end] = grad_logits @ classes
                grad_weight[:vocab_size] += grad_logits.T @ inputs[start:end]
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None, None
