"""The GPT: a decoder-only transformer in the modded-nanogpt / nanochat style.

What sets it apart from a textbook GPT-2:
- rotary position embeddings (no learned positions) and RMS-normalised queries and keys;
- parameter-free RMSNorm, no biases, relu² MLP, separate (untied) input and output embeddings;
- every block sees a learnable mix of the residual stream and the first embedding x0;
- value embeddings: alternating layers add a per-token vector to the attention values, through a
  gate that depends on the input;
- sliding-window attention on some layers, grouped-query attention, logits soft-capped at ±15.

The model's shape (widths, heads, padded vocabulary, which layers have value embeddings, the\nwindow of each layer) is a `ModelShape` from the config layer, which also counts its parameters\nand FLOPs; nothing here repeats those facts. The model is meant to be built on the meta device (shapes only, no memory), moved to its real
device with `to_empty`, and then filled by the one explicit `init_weights()`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.config.derived import VE_GATE_CHANNELS, ModelShape
from llm.model.attention import attend, attend_with_kv_cache
from llm.model.loss_head import IGNORE_INDEX, chunked_softcap_cross_entropy

ROPE_BASE = 10000
ROTARY_LENGTH_FACTOR = 10  # rotary tables cover this many multiples of sequence_len (decoding runs long)
LOGIT_SOFTCAP = 15.0
X0_LAMBDA_INIT = 0.1


def rms_norm(x):
    # No learnable gain: the per-layer scalars and the next matmul absorb any scale.
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, device):
    """cos and sin of each position times each channel-pair frequency, shaped (1, T, 1, head_dim / 2).

    Stored in bf16, the precision the attention inputs run at on GPU.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    inverse_frequency = 1.0 / (ROPE_BASE**exponents)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inverse_frequency)
    return angles.cos().bfloat16()[None, :, None, :], angles.sin().bfloat16()[None, :, None, :]


def apply_rotary(x, cos, sin):
    """Rotate channel i with channel i + head_dim/2 by each position's angle; x is (B, T, H, D)."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos + second * sin, second * cos - first * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        kv_dim = config.n_kv_head * config.head_dim
        q_dim = config.n_head * config.head_dim
        self.c_q = nn.Linear(config.model_dim, q_dim, bias=False)
        self.c_k = nn.Linear(config.model_dim, kv_dim, bias=False)
        self.c_v = nn.Linear(config.model_dim, kv_dim, bias=False)
        self.c_proj = nn.Linear(q_dim, config.model_dim, bias=False)
        has_ve = config.has_value_embedding(layer_idx)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, config.n_kv_head, bias=False) if has_ve else None

    def forward(self, x, value_embedding, cos, sin, window_size, kv_cache):
        batch, seq, _ = x.shape
        q = self.c_q(x).view(batch, seq, self.n_head, self.head_dim)
        k = self.c_k(x).view(batch, seq, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(batch, seq, self.n_kv_head, self.head_dim)
        if value_embedding is not None:
            # Gate in (0, 2), one per kv head; zero-initialised weights start it at exactly 1.
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            # The lookup keeps its table's dtype (fp32 on CPU) while v comes out of autocast's matmul;
            # the sum must stay in v's dtype, which is also the dtype a KV cache stores.
            value_embedding = value_embedding.to(v.dtype).view(batch, seq, self.n_kv_head, self.head_dim)
            v = v + gate.unsqueeze(-1) * value_embedding
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k = rms_norm(q), rms_norm(k)
        if kv_cache is None:
            y = attend(q, k, v, window_size)
        else:
            y = attend_with_kv_cache(q, k, v, kv_cache.layer(self.layer_idx), window_size)
        return self.c_proj(y.contiguous().view(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.model_dim, 4 * config.model_dim, bias=False)
        self.c_proj = nn.Linear(4 * config.model_dim, config.model_dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, value_embedding, cos, sin, window_size, kv_cache):
        x = x + self.attn(rms_norm(x), value_embedding, cos, sin, window_size, kv_cache)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, config: ModelShape):
        # Usually runs under torch.device("meta"): only shapes are decided here, init_weights() fills values.
        super().__init__()
        self.config = config
        self.window_sizes = [(length, 0) for length in config.window_lengths]  # (left, right), FA3's convention
        vocab = config.padded_vocab_size
        kv_dim = config.n_kv_head * config.head_dim
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, config.model_dim),
                "h": nn.ModuleList([Block(config, i) for i in range(config.depth)]),
            }
        )
        self.lm_head = nn.Linear(config.model_dim, vocab, bias=False)
        # Per-layer scalars: resid_lambdas scale the residual stream, x0_lambdas mix the first embedding back in.
        self.resid_lambdas = nn.Parameter(torch.empty(config.depth))
        self.x0_lambdas = nn.Parameter(torch.empty(config.depth))
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(vocab, kv_dim) for i in config.value_embed_layers})
        # Derived from the config, so not saved in checkpoints (persistent=False).
        self.rotary_len = ROTARY_LENGTH_FACTOR * config.sequence_len
        cos, sin = rotary_tables(self.rotary_len, config.head_dim, device=None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        """Fill every parameter and buffer on the model's current device.

        Embeddings ~ N(0, 1); lm_head ~ N(0, 0.001); input projections ~ U(-a, a) with a = sqrt(3 / model_dim),
        i.e. std 1/sqrt(model_dim) without a normal's outliers; output projections and value gates start at
        zero, so each block begins as the identity and each gate at 1.
        """
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = math.sqrt(3.0 / self.config.model_dim)
        for block in self.transformer.h:
            for weight in (block.attn.c_q.weight, block.attn.c_k.weight, block.attn.c_v.weight, block.mlp.c_fc.weight):
                nn.init.uniform_(weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for embedding in self.value_embeds.values():
            nn.init.uniform_(embedding.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(X0_LAMBDA_INIT)
        device = self.transformer.wte.weight.device
        self.cos, self.sin = rotary_tables(self.rotary_len, self.config.head_dim, device)
        if device.type == "cuda":
            # Lookup tables tolerate bf16 and are the largest tensors by far: halve their memory.
            self.transformer.wte.to(dtype=torch.bfloat16)
            self.value_embeds.to(dtype=torch.bfloat16)

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """Loss (targets given; -1 marks ignored positions) or fp32 logits (B, T, vocab_size).

        The mean loss goes through the chunked loss head in eager mode; loss_reduction="none"
        (evaluation's per-token losses), the logits and compiled steps use the whole logit matrix.
        """
        seq = idx.size(1)
        # A slice of positions shared by all rows, or (rows, seq) positions of rows at their own lengths.
        positions, end = (slice(0, seq), seq) if kv_cache is None else kv_cache.positions(seq)
        if end > self.rotary_len:
            raise ValueError(
                f"position {end} is past the rotary tables ({self.rotary_len} = "
                f"{ROTARY_LENGTH_FACTOR} x sequence_len); shorten the input or raise model.sequence_len"
            )
        cos, sin = self.cos[0, positions], self.sin[0, positions]

        x = rms_norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            value_embedding = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, value_embedding, cos, sin, self.window_sizes[i], kv_cache)
        if kv_cache is not None:
            kv_cache.commit(seq)  # every layer has now written its keys and values for these tokens
        x = rms_norm(x)

        if targets is not None and loss_reduction == "mean" and not torch.compiler.is_compiling():
            # Training's loss: the same arithmetic as below, without ever holding every row's logits.
            # Not under torch.compile: there the compiled step with the chunked head peaked higher
            # (8.5 GB against 6.3 GB at the reference's CPU shape, experiments/performance.md), the
            # compiler apparently keeping the chunks' logits rather than recomputing them.
            return chunked_softcap_cross_entropy(x, self.lm_head.weight, targets, self.config.vocab_size,
                                                 LOGIT_SOFTCAP)
        # Crop the padding rows, then soft-cap in fp32 where tanh keeps its precision.
        logits = self.lm_head(x)[..., : self.config.vocab_size].float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=loss_reduction
        )

    def parameter_groups(self):
        """Every parameter exactly once, by the role the optimizer treats differently."""
        groups = {
            "lm_head": list(self.lm_head.parameters()),
            "wte": list(self.transformer.wte.parameters()),
            "value_embeds": list(self.value_embeds.parameters()),
            "resid_lambdas": [self.resid_lambdas],
            "x0_lambdas": [self.x0_lambdas],
            "matrices": list(self.transformer.h.parameters()),  # includes the value gates
        }
        grouped = [id(p) for params in groups.values() for p in params]
        everything = [id(p) for p in self.parameters()]
        assert sorted(grouped) == sorted(everything), "parameter groups must cover each parameter once"
        return groups
