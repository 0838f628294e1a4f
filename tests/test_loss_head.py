"""The chunked loss head against the plain one: the same loss and gradients, in fp32 and bf16 autocast."""

import pytest
import torch
import torch.nn.functional as F

from llm.model.gpt import LOGIT_SOFTCAP
from llm.model.loss_head import chunked_softcap_cross_entropy
from tests.test_model import perturb, tiny_model

VOCAB, PADDED_VOCAB, MODEL_DIM = 300, 320, 48


def plain_loss(hidden, weight, targets):
    """The reference's head: every row's logits at once, cropped, soft-capped and cross-entropied in fp32."""
    logits = F.linear(hidden, weight)[..., :VOCAB].float()
    logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
    return F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1), ignore_index=-1)


def head_inputs(seed=0):
    """Hidden states (3, 7, D) and a padded lm_head whose logits reach into the soft-cap; a third of targets -1."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, MODEL_DIM, generator=generator)
    weight = 0.5 * torch.randn(PADDED_VOCAB, MODEL_DIM, generator=generator)
    targets = torch.randint(0, VOCAB, (3, 7), generator=generator)
    targets[torch.rand(3, 7, generator=generator) < 1 / 3] = -1
    return hidden, weight, targets


def loss_and_grads(loss_fn, hidden, weight, targets, autocast_dtype=None):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = loss_fn(hidden, weight, targets)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def chunked(chunk_rows):
    return lambda hidden, weight, targets: chunked_softcap_cross_entropy(hidden, weight, targets, VOCAB,
                                                                         LOGIT_SOFTCAP, chunk_rows)


@pytest.mark.parametrize("chunk_rows", [1, 5, 21, None])  # one row, a ragged last chunk, exactly one, the default
def test_fp32_loss_and_gradients_equal_the_plain_head(chunk_rows):
    hidden, weight, targets = head_inputs()
    assert (targets == -1).any() and (targets != -1).any()
    expected = loss_and_grads(plain_loss, hidden, weight, targets)
    got = loss_and_grads(chunked(chunk_rows), hidden, weight, targets)
    assert (hidden @ weight.T).abs().max() > 10  # far enough out that the soft-cap bends the logits
    for name, want, have in zip(("loss", "hidden grad", "weight grad"), expected, got):
        assert have.dtype == want.dtype and have.shape == want.shape, name
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-7, msg=name)
    assert not got[2][VOCAB:].any()  # padding rows of lm_head take no part


def test_bf16_autocast_matches_the_plain_head_under_autocast():
    hidden, weight, targets = head_inputs(seed=1)
    expected = loss_and_grads(plain_loss, hidden, weight, targets, autocast_dtype=torch.bfloat16)
    got = loss_and_grads(chunked(4), hidden, weight, targets, autocast_dtype=torch.bfloat16)
    fp32 = loss_and_grads(plain_loss, hidden, weight, targets)
    for name, want, have, exact in zip(("loss", "hidden grad", "weight grad"), expected, got, fp32):
        assert have.dtype == torch.float32, name  # gradients come back in the parameters' dtype
        # bf16 rounding of the weight gradient, chunk by chunk (measured: 0.4 % of its largest entry).
        torch.testing.assert_close(have, want, rtol=1e-2, atol=1e-2 * want.abs().max().item(), msg=name)
        assert (have - exact).abs().max() > 0, f"{name}: the matmuls did not run in bf16"


def test_no_valid_target_gives_nan_like_the_plain_mean():
    hidden, weight, targets = head_inputs()
    targets = torch.full_like(targets, -1)
    assert plain_loss(hidden, weight, targets).isnan()
    assert chunked(5)(hidden, weight, targets).isnan()


def test_model_gradients_equal_those_of_the_per_token_path():
    # The model's mean loss takes the chunked head, its per-token losses the whole-matrix one.
    model = tiny_model()
    perturb(model)
    tokens = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    targets = tokens.roll(-1, dims=1)
    targets[0, :6] = -1

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    per_token = model(tokens, targets, loss_reduction="none")
    expected = grads(per_token.sum() / (targets != -1).sum())
    loss = model(tokens, targets)
    torch.testing.assert_close(loss, per_token[targets.view(-1) != -1].mean())
    for name, grad in grads(loss).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_head_matches_eager():
    hidden, weight, targets = head_inputs(seed=2)
    compiled = torch.compile(chunked(8), fullgraph=True, dynamic=False)  # fullgraph: no graph break allowed
    for autocast_dtype, tolerance in ((None, 1e-5), (torch.bfloat16, 2e-2)):
        expected = loss_and_grads(chunked(8), hidden, weight, targets, autocast_dtype)
        got = loss_and_grads(compiled, hidden, weight, targets, autocast_dtype)
        for want, have in zip(expected, got):
            torch.testing.assert_close(have, want, rtol=tolerance, atol=tolerance * want.abs().max().item())
