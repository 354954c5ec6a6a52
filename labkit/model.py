"""A Llama-family decoder over a flat, unpadded batch: the network only (weights: labkit.loader).

The model (`LlamaForCausalLM`) is the classic stack: token embedding -> N x [RMSNorm -> attention
(RoPE, grouped-query heads, paged KV cache) -> residual -> RMSNorm -> SwiGLU MLP -> residual] ->
RMSNorm -> lm_head (tied to the embedding or not). Two switches cover the nearest relatives:
`attention_bias` (Qwen2: biases on q, k, v) and `qk_norm` (Qwen3: an RMSNorm over each head of q and
k before RoPE). Parameter names are Hugging Face's, so an HF state dict loads as is.

One forward runs a FLAT batch: the new tokens of every sequence concatenated, `input_ids (T,)` and
`positions (T,)`, with an `AttentionMetadata` saying which rows belong to which sequence (see
labkit.attention). There is no padding and no batch dimension; a decode step of 8 sequences is T = 8.
KV caches are per layer a (k_cache, v_cache) pair from `labkit.kv_cache.allocate_kv_caches`.

What this does not handle: sliding-window attention, MoE, partial rotary, biases on o_proj or the
MLP, RoPE types other than default / linear / llama3, or quantized compute (GGUF weights are
dequantized once at load time; the model computes in float32, bfloat16 or float16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit import fused, onednn
from labkit.attention import DEFAULT_BACKEND, AttentionMetadata, paged_attention
from labkit.onednn import Linear  # nn.Linear, computed by oneDNN on CPU

# ----------------------------------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    """Shapes and constants of a Llama-family decoder. Defaults are SmolLM2-135M's (the workbook's model)."""

    vocab_size: int = 49152
    hidden_size: int = 576  # width of the residual stream
    intermediate_size: int = 1536  # width of the SwiGLU MLP
    num_hidden_layers: int = 30
    num_attention_heads: int = 9  # query heads
    num_key_value_heads: int = 3  # K/V heads; query head h reads kv head h // (heads // kv_heads)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads (Qwen3 sets it apart)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0  # RoPE base; SmolLM2 uses 1e5, Llama 2 1e4, Llama 3 5e5
    rope_scaling: dict | None = None  # None, {"rope_type": "linear", "factor": f} or llama3's dict
    max_position_embeddings: int = 8192  # informational: RoPE itself has no hard limit
    tie_word_embeddings: bool = True  # lm_head reuses the embedding matrix (SmolLM2 does)
    attention_bias: bool = False  # biases on q, k, v projections (Qwen2); never on o_proj
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (Qwen3)
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings")
        for name in sizes:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} = {getattr(self, name)!r}; it must be a positive int.")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                 f"{self.num_attention_heads}, so head_dim cannot be inferred: pass head_dim.")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim = {self.head_dim}; RoPE rotates pairs, so it must be even and >= 2.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}: in grouped-query attention each "
                             f"kv head serves an equal group of query heads.")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise ValueError(f"rms_norm_eps = {self.rms_norm_eps} and rope_theta = {self.rope_theta} must be > 0.")
        self.rope_scaling = _check_rope_scaling(self.rope_scaling)
        for i in [*self.eos_token_ids, *([] if self.bos_token_id is None else [self.bos_token_id])]:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"bos/eos token id {i} is outside the vocabulary [0, {self.vocab_size}).")

    @property
    def eos_token_ids(self) -> list[int]:
        """eos_token_id as a list (empty when unknown)."""
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)


_ROPE_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def _check_rope_scaling(scaling: dict | None) -> dict | None:
    if not scaling:
        return None
    scaling = dict(scaling)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in _ROPE_KEYS:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; use one of {sorted(_ROPE_KEYS)} or None.")
    missing = _ROPE_KEYS[kind] - scaling.keys()
    if missing:
        raise ValueError(f"rope_scaling of type {kind!r} lacks {sorted(missing)}; got {scaling}.")
    if not scaling["factor"] >= 1:
        raise ValueError(f"rope_scaling factor {scaling['factor']} must be >= 1 (it stretches the context).")
    scaling["rope_type"] = kind
    scaling.pop("type", None)
    return scaling


# ----------------------------------------------------------------------------------------------------
# layers


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the statistics in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """(..., dim) -> (..., dim); given a residual, (norm(x + residual), x + residual) as vLLM's layers do."""
        if residual is not None:
            if fused.enabled(x):  # the add and the norm in one CUDA kernel
                return fused.add_rms_norm(x, residual, self.weight, self.eps)
            residual = x + residual
            return self(residual), residual
        if fused.enabled(x):  # the same function in one CUDA kernel (labkit/fused.py)
            return fused.rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """(head_dim // 2,) float32 angular frequency of each rotated pair, scaled as config.rope_scaling says."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    s = config.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":  # positions divided by factor == frequencies divided by factor
        return inv_freq / s["factor"]
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend in between
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """positions (T,) -> cos, sin (T, head_dim): angles position * inv_freq, the half-split layout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.inv_freq = rope_inv_freq(config)  # kept float32 and out of the state dict on purpose

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions[:, None].float() * self.inv_freq[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, D): rotate pair (x[i], x[i + D/2]) by angle i of each row's position."""
    if fused.enabled(x) and fused.rope_supported(x):  # the same function in one CUDA kernel
        return fused.apply_rope(x, cos, sin)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (T, 1, D)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str):
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = (c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        self.scale = self.head_dim**-0.5
        self.attn_backend = attn_backend
        self.q_proj = Linear(c.hidden_size, self.num_heads * self.head_dim, bias=c.attention_bias)
        self.k_proj = Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=c.attention_bias)
        self.v_proj = Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=c.attention_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, c.rms_norm_eps)

    def qkv(self, x, cos, sin):  # x (T, hidden) -> q (T, H, D), k and v (T, Hkv, D), q and k rotated
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            if fused.enabled(q) and fused.rope_supported(q):  # the norm and RoPE in one CUDA kernel each
                return fused.rms_norm_rope(q, self.q_norm, cos, sin), fused.rms_norm_rope(k, self.k_norm, cos, sin), v
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, kv_cache, meta):  # x (T, hidden) -> (T, hidden)
        q, k, v = self.qkv(x, cos, sin)
        o = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, backend=self.attn_backend)
        return self.o_proj(o.reshape(x.shape[0], self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(fused.silu_mul(gate, up) if fused.enabled(gate) else F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, attn_backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, h, residual, cos, sin, kv_cache, meta):  # (T, hidden) x 2 -> (T, hidden) x 2
        # h: the last sublayer's output, residual: the running sum (None before the first layer); the
        # residual add happens inside the next norm. Same sums as h = h + attn(norm(h)); h + mlp(norm(h)).
        if residual is None:
            h, residual = self.input_layernorm(h), h
        else:
            h, residual = self.input_layernorm(h, residual)
        h, residual = self.post_attention_layernorm(self.self_attn(h, cos, sin, kv_cache, meta), residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, attn_backend) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids, positions, kv_caches, meta):  # (T,), (T,) -> (T, hidden)
        cos, sin = self.rotary_emb(positions)  # (T, D) each, float32
        h, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, cos, sin, kv_cache, meta)
        return self.norm(h, residual)[0]


class LlamaForCausalLM(nn.Module):
    """The decoder plus its output head. forward -> hidden states; compute_logits -> vocabulary scores."""

    def __init__(self, config: ModelConfig, attn_backend: str = DEFAULT_BACKEND):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, attn_backend)
        # tied: compute_logits multiplies by the embedding matrix itself, so there is nothing to keep in sync
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions (T,) of a flat batch -> hidden states (T, hidden_size).

        Writes this step's K/V into kv_caches (one (k_cache, v_cache) per layer) at
        attn_metadata.slot_mapping, and reads each sequence's context through its block table."""
        assert input_ids.dim() == 1 and input_ids.shape == positions.shape, (input_ids.shape, positions.shape)
        assert len(kv_caches) == self.config.num_hidden_layers, "one (k_cache, v_cache) pair per layer"
        return self.model(input_ids, positions, kv_caches, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, hidden_size) -> logits (N, vocab_size), float32 whatever the model dtype.

        An engine passes only the rows it samples from (each sequence's last query row,
        hidden[query_start_loc[1:] - 1]), not the whole flat batch."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return onednn.linear(hidden, weight).float()

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype


def __getattr__(name: str):
    """The loaders moved to labkit.loader; their names stay importable from here for older code."""
    from labkit import loader

    if name in loader.__all__:
        return getattr(loader, name)
    raise AttributeError(f"module 'labkit.model' has no attribute {name!r}")


__all__ = ["LlamaForCausalLM", "ModelConfig", "RMSNorm", "apply_rope", "rope_inv_freq"]
