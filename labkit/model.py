"""A Llama-family decoder over a flat, unpadded batch, and the loaders that fill it with weights.

The model (`LlamaForCausalLM`) is the classic stack: token embedding -> N x [RMSNorm -> attention
(RoPE, grouped-query heads, paged KV cache) -> residual -> RMSNorm -> SwiGLU MLP -> residual] ->
RMSNorm -> lm_head (tied to the embedding or not). Two switches cover the nearest relatives:
`attention_bias` (Qwen2: biases on q, k, v) and `qk_norm` (Qwen3: an RMSNorm over each head of q and
k before RoPE). Parameter names are Hugging Face's, so an HF state dict loads as is.

One forward runs a FLAT batch: the new tokens of every sequence concatenated, `input_ids (T,)` and
`positions (T,)`, with an `AttentionMetadata` saying which rows belong to which sequence (see
labkit.attention). There is no padding and no batch dimension; a decode step of 8 sequences is T = 8.

KV caches: `allocate_kv_caches(config, num_blocks, block_size, dtype, device)` returns, per layer, a
(k_cache, v_cache) pair, each `[num_blocks, block_size, num_kv_heads, head_dim]`; a slot is
`block_id * block_size + offset`, -1 = no slot. labkit.kv_cache wraps tensors like these.

Loaders (each returns a model in eval mode):
  load_gguf(path=None)       the SmolLM2 GGUF asset (or any llama-architecture GGUF), dequantized to
                             float; converted once and cached as safetensors under
                             labkit.assets.home()/"converted"/<gguf sha256>.safetensors
  from_hf_dir(path)          a local Hugging Face folder (config.json + *.safetensors / *.bin)
  from_hf_model(hf_model)    an in-memory transformers model (Llama, Qwen2, Qwen3)
  random_model(config, seed) random weights, for tests and for shapes

What this does not handle: sliding-window attention, MoE, partial rotary, biases on o_proj or the
MLP, RoPE types other than default / linear / llama3, or quantized compute (GGUF weights are
dequantized once at load time; the model computes in float32, bfloat16 or float16).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labkit.attention import DEFAULT_BACKEND, AttentionMetadata, paged_attention

GGUF_ASSET = "smollm2-135m-instruct-q4_1"
_CONVERTED_FORMAT = "labkit-converted-gguf-v1"  # bump when the converted file layout changes


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
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"ModelConfig.{name} = {value!r}; it must be a positive int. Fix: set it >= 1."
                )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}, so head_dim cannot be inferred. "
                    f"Fix: pass head_dim explicitly."
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim = {self.head_dim}; RoPE rotates pairs, so it must be even and >= 2.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads}; grouped-query attention shares each kv head among an equal "
                f"group of query heads. Fix: choose num_key_value_heads dividing num_attention_heads."
            )
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps = {self.rms_norm_eps}; it must be > 0 (typically 1e-5 or 1e-6).")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta = {self.rope_theta}; the RoPE base must be > 0 (e.g. 10000.0).")
        self.rope_scaling = _check_rope_scaling(self.rope_scaling)
        for name in ("bos_token_id", "eos_token_id"):
            ids = getattr(self, name)
            for i in [ids] if isinstance(ids, int) else (ids or []):
                if not 0 <= i < self.vocab_size:
                    raise ValueError(f"{name} {i} is outside the vocabulary [0, {self.vocab_size}).")

    @property
    def eos_token_ids(self) -> list[int]:
        """eos_token_id as a list (empty when unknown)."""
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)

    @classmethod
    def from_hf(cls, hf_config) -> ModelConfig:
        """From a transformers LlamaConfig / Qwen2Config / Qwen3Config (transformers 5 or 4)."""
        kind = getattr(hf_config, "model_type", None)
        if kind not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"model_type {kind!r} is not supported; labkit runs llama, qwen2 and qwen3.")
        _refuse_hf_features(hf_config, kind)
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        theta = rope.pop("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        rope.pop("partial_rotary_factor", None)
        if not rope:  # transformers 4 kept scaling apart from the base
            rope = dict(getattr(hf_config, "rope_scaling", None) or {})
        eos = hf_config.eos_token_id
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=hf_config.num_attention_heads,
            num_key_value_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            head_dim=getattr(hf_config, "head_dim", None),
            rms_norm_eps=hf_config.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=rope or None,
            max_position_embeddings=hf_config.max_position_embeddings,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            attention_bias=kind == "qwen2",
            qk_norm=kind == "qwen3",
            bos_token_id=hf_config.bos_token_id,
            eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else eos,
        )


def _refuse_hf_features(hf_config, kind: str) -> None:
    """Raise on HF config features this model does not implement (rather than run them wrongly)."""
    problems = []
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf_config.hidden_act!r} (only 'silu', i.e. SwiGLU)")
    if getattr(hf_config, "mlp_bias", False):
        problems.append("mlp_bias=True")
    if kind != "qwen2" and getattr(hf_config, "attention_bias", False):
        problems.append("attention_bias=True on a llama/qwen3 model (that also biases o_proj)")
    if getattr(hf_config, "use_sliding_window", False):
        problems.append("use_sliding_window=True")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']}")
    if problems:
        raise ValueError(
            f"this {kind} config uses features labkit's model does not implement: "
            f"{'; '.join(problems)}. Fix: use a model without them."
        )


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
        raise ValueError(
            f"rope_scaling type {kind!r} is not supported; use one of {sorted(_ROPE_KEYS)} or None."
        )
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
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
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)  # (T, 1, D)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str):
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.scale = self.head_dim**-0.5
        self.attn_backend = attn_backend
        self.q_proj = nn.Linear(c.hidden_size, self.num_heads * self.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.num_kv_heads * self.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, c.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache, meta):  # x (T, hidden) -> (T, hidden)
        T = x.shape[0]
        q = self.q_proj(x).view(T, self.num_heads, self.head_dim)  # (T, H, D)
        k = self.k_proj(x).view(T, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        v = self.v_proj(x).view(T, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, backend=self.attn_backend)
        return self.o_proj(o.reshape(T, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, attn_backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, h, cos, sin, kv_cache, meta):  # (T, hidden) -> (T, hidden)
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, kv_cache, meta)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attn_backend: str):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, attn_backend) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids, positions, kv_caches, meta):  # (T,), (T,) -> (T, hidden)
        cos, sin = self.rotary_emb(positions)  # (T, D) each, float32
        h = self.embed_tokens(input_ids)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h = layer(h, cos, sin, kv_cache, meta)
        return self.norm(h)


class LlamaForCausalLM(nn.Module):
    """The decoder plus its output head. forward -> hidden states; compute_logits -> vocabulary scores."""

    def __init__(self, config: ModelConfig, attn_backend: str = DEFAULT_BACKEND):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, attn_backend)
        # tied: compute_logits multiplies by the embedding matrix itself, so there is nothing to keep in sync
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
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
        return F.linear(hidden, weight).float()

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @torch.inference_mode()
    def logits(
        self, input_ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor, block_size: int = 16
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits at every position of one or more whole sequences, no cache management needed.

        input_ids: a list of ids (or 1-D tensor) -> (L, vocab); a list of lists -> a list of (L_i, vocab).
        All sequences run as ONE flat prefill batch through a throwaway paged cache."""
        single = (
            isinstance(input_ids, torch.Tensor)
            and input_ids.dim() == 1
            or (len(input_ids) > 0 and not isinstance(input_ids[0], (Sequence, torch.Tensor)))
        )
        seqs = [input_ids] if single else list(input_ids)
        seqs = [[int(t) for t in s] for s in seqs]
        if not seqs:
            raise ValueError("no sequences given; pass a list of token ids or a list of such lists.")
        for i, s in enumerate(seqs):
            if not s:
                raise ValueError(f"sequence {i} is empty; every sequence needs at least one token.")
            bad = [t for t in s if not 0 <= t < self.config.vocab_size]
            if bad:
                raise ValueError(
                    f"sequence {i} has token id {bad[0]} outside [0, {self.config.vocab_size}). "
                    f"Fix: encode with this model's tokenizer."
                )
        hidden, _ = self.forward_sequences(seqs, block_size)
        logits = self.compute_logits(hidden)  # (sum L, vocab)
        parts = list(logits.split([len(s) for s in seqs]))
        return parts[0] if single else parts

    def forward_sequences(
        self, seqs: Sequence[Sequence[int]], block_size: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run whole sequences as ONE flat prefill batch through a throwaway paged cache (each sequence
        gets consecutive blocks). Returns (hidden (sum L, hidden_size), input_ids (sum L,)). Not under
        inference_mode, so gradients flow (labkit.measure trains through it)."""
        lens = [len(s) for s in seqs]
        tables, next_block = [], 0
        for n in lens:
            num_blocks = -(-n // block_size)
            tables.append(list(range(next_block, next_block + num_blocks)))
            next_block += num_blocks
        caches = allocate_kv_caches(self.config, next_block, block_size, self.dtype, self.device)
        meta = AttentionMetadata.build(lens, lens, tables, block_size, device=self.device)
        ids = torch.tensor([int(t) for s in seqs for t in s], dtype=torch.int64, device=self.device)  # (T,)
        return self(ids, meta.positions(), caches, meta), ids


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, a zeroed (k_cache, v_cache), each (num_blocks, block_size, num_kv_heads, head_dim)."""
    if num_blocks < 1 or block_size < 1:
        raise ValueError(f"num_blocks {num_blocks} and block_size {block_size} must both be >= 1.")
    shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(config.num_hidden_layers)
    ]


# ----------------------------------------------------------------------------------------------------
# weights


def _empty_model(config: ModelConfig, dtype: torch.dtype, device, attn_backend: str) -> LlamaForCausalLM:
    """A model whose parameters are allocated but not initialised (loading overwrites them all)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config, attn_backend)
    return model.to_empty(device=device).to(dtype).eval()


_IGNORED_KEYS = ("rotary_emb.inv_freq",)


def load_state_dict(model: LlamaForCausalLM, state_dict: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """Copy an HF-named state dict into model (casting dtype/device); every parameter must be present."""
    own = model.state_dict()
    given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_KEYS)}
    if model.lm_head is None:
        given.pop("lm_head.weight", None)  # tied: the head IS the embedding
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the config: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}). Fix: check the config "
            f"(tie_word_embeddings, attention_bias, qk_norm, num_hidden_layers) against the weights."
        )
    with torch.no_grad():
        for name, param in own.items():
            if param.shape != given[name].shape:
                raise ValueError(
                    f"{name}: the weights have shape {tuple(given[name].shape)}, the config "
                    f"implies {tuple(param.shape)}. Fix: load with the config these weights came with."
                )
            param.copy_(given[name])
    return model


def from_hf_model(
    hf_model, dtype: torch.dtype | None = None, attn_backend: str = DEFAULT_BACKEND
) -> LlamaForCausalLM:
    """Copy an in-memory transformers model (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)."""
    config = ModelConfig.from_hf(hf_model.config)
    sd = hf_model.state_dict()
    dtype = dtype or next(iter(sd.values())).dtype
    model = _empty_model(config, dtype, hf_model.device, attn_backend)
    return load_state_dict(model, sd)


def from_hf_dir(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_backend: str = DEFAULT_BACKEND,
) -> LlamaForCausalLM:
    """A local Hugging Face model folder: config.json plus *.safetensors (or pytorch_model*.bin)."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json. Fix: pass the folder of a Hugging Face model.")
    config = ModelConfig.from_hf(AutoConfig.from_pretrained(path, local_files_only=True))
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors or pytorch_model*.bin weights.")
    sd = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd.update(load_file(f))
        else:
            sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return load_state_dict(_empty_model(config, dtype, device, attn_backend), sd)


def random_model(
    config: ModelConfig,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_backend: str = DEFAULT_BACKEND,
) -> LlamaForCausalLM:
    """Random weights: N(0, 0.02) matrices and biases, norm weights 1 + N(0, 0.1) (so a norm bug shows)."""
    model = _empty_model(config, torch.float32, "cpu", attn_backend)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# GGUF


@dataclass
class GGUFInfo:
    """What an engine needs from a GGUF besides the weights."""

    path: str
    sha256: str
    name: str  # general.name
    chat_template: str | None  # tokenizer.chat_template (a Jinja string), None when absent
    config: ModelConfig  # with bos_token_id / eos_token_id from the tokenizer metadata


# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _gguf_name(name: str) -> str:
    stem, kind = name.rsplit(".", 1)  # e.g. "blk.3.attn_q", "weight"
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        if part not in _GGUF_LAYER_NAMES:
            raise ValueError(f"GGUF tensor {name!r} has no counterpart in a Llama decoder.")
        return f"model.layers.{layer}.{_GGUF_LAYER_NAMES[part]}.{kind}"
    if stem not in _GGUF_TOP_NAMES:
        raise ValueError(f"GGUF tensor {name!r} has no counterpart in a Llama decoder (e.g. rope_freqs).")
    return f"{_GGUF_TOP_NAMES[stem]}.{kind}"


def unpermute_gguf_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of q/k projection rows (or biases), giving HF's row order back.

    ggml's RoPE rotates ADJACENT pairs (x[2i], x[2i+1]); HF's rotates the two HALVES of each head
    (x[i], x[i + D/2]). So llama.cpp's converter reorders every head's D output rows from
    [first half | second half] to interleaved [h0, s0, h1, s1, ...]: reshape (heads, 2, D/2) and swap
    the last two axes. Undoing it: view the rows as (heads, D/2, 2) and swap back."""
    rows = w.shape[0]
    half = rows // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _gguf_value(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _gguf_config(reader) -> tuple[ModelConfig, str, str | None]:
    arch = _gguf_value(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"GGUF architecture {arch!r} is not supported; labkit loads llama, qwen2, qwen3.")
    a = lambda key, default=None: _gguf_value(reader, f"{arch}.{key}", default)
    heads = a("attention.head_count")
    hidden = a("embedding_length")
    scaling = None
    if a("rope.scaling.type") not in (None, "none"):
        scaling = {"rope_type": a("rope.scaling.type"), "factor": a("rope.scaling.factor")}
    names = {t.name for t in reader.tensors}
    vocab = a("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    config = ModelConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        intermediate_size=int(a("feed_forward_length")),
        num_hidden_layers=int(a("block_count")),
        num_attention_heads=int(heads),
        num_key_value_heads=int(a("attention.head_count_kv", heads)),
        head_dim=int(a("attention.key_length", hidden // heads)),
        rms_norm_eps=float(a("attention.layer_norm_rms_epsilon")),
        rope_theta=float(a("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(a("context_length", 2048)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        bos_token_id=_gguf_value(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_gguf_value(reader, "tokenizer.ggml.eos_token_id"),
    )
    return config, arch, _gguf_value(reader, "general.name", "")


def _convert_gguf(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, str, str | None]:
    """Read and dequantize every tensor of a GGUF; q/k rows put back in HF order (llama arch only)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    config, arch, name = _gguf_config(reader)
    sd = {}
    for t in reader.tensors:
        a = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = torch.from_numpy(a if a.flags.writeable else a.copy())  # F32 tensors come back memory-mapped
        key = _gguf_name(t.name)
        if arch == "llama" and ".attn_q." in t.name:
            w = unpermute_gguf_qk(w, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in t.name:
            w = unpermute_gguf_qk(w, config.num_key_value_heads)
        sd[key] = w
    return sd, config, name, _gguf_value(reader, "tokenizer.chat_template")


def converted_path(sha256: str) -> Path:
    """Where the converted (dequantized, HF-named) weights of the GGUF with this sha256 are cached."""
    from labkit import assets

    return assets.home() / "converted" / f"{sha256}.safetensors"


def load_gguf(
    path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attn_backend: str = DEFAULT_BACKEND,
    use_cache: bool = True,
) -> tuple[LlamaForCausalLM, GGUFInfo]:
    """Load a GGUF (default: the SmolLM2-135M-Instruct asset) as a float model, plus its GGUFInfo.

    The first load dequantizes with the gguf package (Q4_1 / Q8_0 -> float32, q/k rows un-permuted)
    and writes converted_path(sha256), float32 safetensors (about 540 MB for SmolLM2-135M, the tied
    head stored once) with the config and chat template in its metadata; later loads read that file
    (about 1 s instead of about 5 s). A converted file that cannot be read is rebuilt. use_cache=False
    converts in memory and writes nothing."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from labkit import assets

    if path is None:
        path, sha = assets.path(GGUF_ASSET), assets.ASSETS[GGUF_ASSET].sha256  # assets.path checks the sha
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no GGUF file at {path}. Fix: pass the path of a .gguf file, or None "
                f"for the {GGUF_ASSET} asset."
            )
        sha = assets.sha256_of(path)
    cached = converted_path(sha)
    sd = None
    if use_cache and cached.is_file():
        try:
            with safe_open(cached, framework="pt") as f:
                meta = f.metadata()
                if meta.get("format") == _CONVERTED_FORMAT:
                    sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # a truncated or foreign file: rebuild it below
            sd = None
    if sd is not None:
        config = ModelConfig(**json.loads(meta["config"]))
        name, template = meta["name"], meta.get("chat_template") or None
    else:
        sd, config, name, template = _convert_gguf(path)
        if use_cache:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(cached.name + f".part{os.getpid()}")
            meta = {
                "format": _CONVERTED_FORMAT,
                "config": json.dumps(asdict(config)),
                "name": name,
                "chat_template": template or "",
                "source": path.name,
            }
            save_file(sd, tmp, metadata=meta)
            os.replace(tmp, cached)
    model = load_state_dict(_empty_model(config, dtype, device, attn_backend), sd)
    return model, GGUFInfo(path=str(path), sha256=sha, name=name, chat_template=template, config=config)


__all__ = [
    "GGUFInfo",
    "LlamaForCausalLM",
    "ModelConfig",
    "allocate_kv_caches",
    "converted_path",
    "from_hf_dir",
    "from_hf_model",
    "load_gguf",
    "load_state_dict",
    "random_model",
    "unpermute_gguf_qk",
]
