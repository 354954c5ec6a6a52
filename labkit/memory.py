"""Model shapes and the byte arithmetic of training and inference (chapters 2-4 of the lab).

What it does:
  - `ModelShape`: the handful of numbers that fix a decoder's memory (layers, hidden size, heads, KV
    heads, head dim, MLP width, vocabulary, tied embeddings). The parameter count is *derived* from
    the shape, never typed in; presets come from the published config.json of each model, and
    `ModelShape.from_hf_config` reads any Llama-family or GPT-2 config (object or dict).
  - Calculators, all in bytes: embeddings, weights per dtype (int4/int8 with per-group scales),
    training footprint (weights, gradients, fp32 master copy, Adam states, activations) against
    inference footprint (weights, KV cache, activations), KV cache per token / sequence / batch, how
    many sequences fit on a GPU, and roofline lower bounds for a decode step and a prefill.
  - `format_bytes` keeps decimal (kB, MB, GB: powers of 1000) and binary (KiB, MiB, GiB: powers of
    1024) units apart: 409,600,000 bytes is 409.6 MB = 390.6 MiB.
  - The 13B memory table as the lab text prints it (`lab_table_13b`) next to a corrected one
    (`corrected_table_13b`): Adam keeps two fp32 moments (8 bytes per parameter, not 4), and a
    decode step is bounded by reading every weight once (milliseconds, not < 0.1 ms).

What it does not do: measure anything on a device (the bounds are lower bounds from datasheet
numbers), model tensor-parallel sharding, allocator overheads or CUDA context memory, or count
the parameters of architectures other than Llama-family and GPT-2 (MoE, MLA, sliding windows).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = [
    "DTYPE_BITS", "GPUS", "PRESETS", "UNITS", "Footprint", "GPUSpec", "ModelShape", "StepBound", "TableRow",
    "attention_dot_products", "corrected_table_13b", "decode_step_bound", "dtype_bytes",
    "embedding_bytes", "embedding_fraction", "format_bytes", "format_table", "forward_flops",
    "get_gpu", "get_preset", "gpus_needed", "inference_activation_bytes", "inference_footprint",
    "gpu_headroom", "kv_bytes_for_batch", "kv_cache_budget", "kv_cache_bytes", "kv_cache_bytes_per_token",
    "lab_table_13b", "max_num_seqs", "max_sequences", "prefill_bound", "token_forwards",
    "training_activation_bytes", "training_footprint", "weight_bytes",
]

# ----------------------------------------------------------------------------------------------
# Units and dtypes

UNITS: dict[str, int] = {
    "B": 1,
    "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,  # decimal (SI): what datasheets print
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,  # binary (IEC): what allocators count
}
_DECIMAL = ("B", "kB", "MB", "GB", "TB")
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB")

# Storage bits per element. int4 is half a byte; per-group scales are added by `weight_bytes`.
DTYPE_BITS: dict[str, int] = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}
_DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "uint8": "int8", "uint4": "int4",
}


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return `value` as an int, or raise naming the value and the rule (>= minimum)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, numbers.Real) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be a fraction in (0, 1], got {value!r}")
    return float(value)


def _dtype_name(dtype: Any) -> str:
    """Canonical dtype name: 'fp16' for 'fp16', 'float16', 'half' or torch.float16."""
    name = str(dtype).lower().removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BITS:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPE_BITS)} (or torch's names)")
    return name


def dtype_bytes(dtype: Any) -> float:
    """Bytes per element of `dtype` (0.5 for int4), without any quantization scales."""
    return DTYPE_BITS[_dtype_name(dtype)] / 8


def format_bytes(num_bytes: float, unit: str = "auto", precision: int = 1) -> str:
    """Format a byte count without mixing decimal and binary units.

    unit="auto" prints both systems, e.g. "409.6 MB (390.6 MiB)"; a named unit ("MB", "MiB",
    "GB", "GiB", "kB", "KiB", "B", "TB", "TiB") prints only that one. "KB" is refused: it means
    1000 to some readers and 1024 to others.
    """
    if not isinstance(num_bytes, numbers.Real) or num_bytes < 0:
        raise ValueError(f"num_bytes must be a number >= 0, got {num_bytes!r}")
    if unit == "KB":
        raise ValueError("unit 'KB' is ambiguous: use 'kB' (1,000 bytes) or 'KiB' (1,024 bytes)")
    if unit == "auto":
        dec, bin_ = _pick_unit(num_bytes, _DECIMAL), _pick_unit(num_bytes, _BINARY)
        if dec == "B" and bin_ == "B":
            return f"{num_bytes:,.0f} B"
        return f"{format_bytes(num_bytes, dec, precision)} ({format_bytes(num_bytes, bin_, precision)})"
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}: use 'auto' or one of {list(UNITS)}")
    if unit == "B":
        return f"{num_bytes:,.0f} B"
    return f"{num_bytes / UNITS[unit]:,.{precision}f} {unit}"


def _pick_unit(num_bytes: float, system: tuple[str, ...]) -> str:
    """Largest unit of `system` in which num_bytes is at least 1."""
    chosen = system[0]
    for unit in system:
        if num_bytes >= UNITS[unit]:
            chosen = unit
    return chosen


# ----------------------------------------------------------------------------------------------
# Model shapes

_ARCHS = ("llama", "gpt2")


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that fix its memory. Names follow HF config.json.

    arch="llama": RMSNorm (weight only), gated SiLU MLP (gate, up, down), RoPE (no position table);
    covers Llama 2/3, SmolLM2, Mistral, Qwen2/3. arch="gpt2": LayerNorm (weight and bias), GELU MLP
    (two matrices), learned position table of `max_position_embeddings` rows, biases everywhere.
    """

    name: str
    num_hidden_layers: int  # L
    hidden_size: int  # h (= d_model)
    num_attention_heads: int  # query heads
    num_key_value_heads: int  # KV heads (GQA); equal to num_attention_heads for MHA
    intermediate_size: int  # MLP width
    vocab_size: int  # V
    tie_word_embeddings: bool  # lm_head shares the embedding matrix
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    arch: str = "llama"
    max_position_embeddings: int = 2048  # rows of GPT-2's position table; context limit for both
    qkv_bias: bool = False  # bias on q, k, v projections (Qwen2: yes)
    o_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm on each query and key head (Qwen3)

    def __post_init__(self) -> None:
        for f in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size", "max_position_embeddings"):
            _check_int(f, getattr(self, f))
        if self.arch not in _ARCHS:
            raise ValueError(f"arch must be one of {_ARCHS}, got {self.arch!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
                f"{self.num_attention_heads} (each KV head serves a whole group of query heads)")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}: pass head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _check_int("head_dim", self.head_dim)

    # -- parameter counts, derived from the shape ------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameters per component; their sum is `num_params`."""
        h, L, V = self.hidden_size, self.num_hidden_layers, self.vocab_size
        q_out = self.num_attention_heads * self.head_dim  # width of q (and of o's input)
        kv_out = self.num_key_value_heads * self.head_dim  # width of k and of v
        gpt2 = self.arch == "gpt2"
        attn = h * q_out + 2 * h * kv_out + q_out * h  # W_q, W_k, W_v, W_o
        if gpt2 or self.qkv_bias:
            attn += q_out + 2 * kv_out
        if gpt2 or self.o_bias:
            attn += h
        if self.qk_norm:
            attn += 2 * self.head_dim
        i = self.intermediate_size
        if gpt2:
            mlp = 2 * h * i + i + h  # c_fc and c_proj with biases
        else:
            mlp = 3 * h * i + ((2 * i + h) if self.mlp_bias else 0)  # gate, up, down
        norm = 2 * h if gpt2 else h  # LayerNorm has a bias, RMSNorm does not
        return {
            "embedding": V * h,
            "position_embedding": self.max_position_embeddings * h if gpt2 else 0,
            "attention": L * attn,
            "mlp": L * mlp,
            "norms": (2 * L + 1) * norm,  # two per layer, one final
            "lm_head": 0 if self.tie_word_embeddings else V * h,
        }

    @property
    def num_params(self) -> int:
        return sum(self.param_counts().values())

    @property
    def num_layer_params(self) -> int:
        """Parameters inside the transformer layers (what every token's forward multiplies by)."""
        c = self.param_counts()
        return c["attention"] + c["mlp"]

    # -- construction from configs -----------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: Any, name: str | None = None) -> ModelShape:
        """Build a shape from a transformers config object or a config.json dict.

        Handles model_type "gpt2" and the Llama family ("llama", "mistral", "qwen2", "qwen3");
        a dict without model_type is read as GPT-2 when it has "n_embd", else as Llama.
        """
        get = _config_getter(config)
        model_type = get("model_type") or ("gpt2" if get("n_embd") is not None else "llama")
        name = name or get("_name_or_path") or model_type
        if model_type == "gpt2":
            return _shape_from_gpt2(get, name)
        if model_type in _LLAMA_FAMILY:
            return _shape_from_llama(get, name, model_type)
        raise ValueError(
            f"model_type {model_type!r} is not supported: use a GPT-2 config or one of "
            f"{sorted(_LLAMA_FAMILY)}, or build ModelShape(...) by hand")


_LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3", "smollm", "smollm2"}


def _config_getter(config: Any):
    if isinstance(config, Mapping):
        return lambda key, default=None: config.get(key, default)
    return lambda key, default=None: getattr(config, key, default)


def _shape_from_gpt2(get, name: str) -> ModelShape:
    h = get("n_embd")
    return ModelShape(
        name=name, arch="gpt2", num_hidden_layers=get("n_layer"), hidden_size=h,
        num_attention_heads=get("n_head"), num_key_value_heads=get("n_head"),
        intermediate_size=get("n_inner") or 4 * h, vocab_size=get("vocab_size"),
        tie_word_embeddings=bool(get("tie_word_embeddings", True)),
        max_position_embeddings=get("n_positions", 1024))


def _shape_from_llama(get, name: str, model_type: str) -> ModelShape:
    heads = get("num_attention_heads")
    attention_bias = bool(get("attention_bias", False))
    return ModelShape(
        name=name, arch="llama", num_hidden_layers=get("num_hidden_layers"),
        hidden_size=get("hidden_size"), num_attention_heads=heads,
        num_key_value_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim"),
        intermediate_size=get("intermediate_size"), vocab_size=get("vocab_size"),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        max_position_embeddings=get("max_position_embeddings", 2048),
        qkv_bias=attention_bias or model_type == "qwen2",  # Qwen2 always has q, k, v biases
        o_bias=attention_bias, mlp_bias=bool(get("mlp_bias", False)), qk_norm=model_type == "qwen3")


# Values from each model's published config.json (checked against the hub files' contents).
PRESETS: dict[str, ModelShape] = {
    # openai-community/gpt2: n_layer 12, n_embd 768, n_head 12, n_inner null (4*768), vocab 50257,
    # n_positions 1024, tied. 124,439,808 parameters.
    "gpt2": ModelShape("gpt2", 12, 768, 12, 12, 3072, 50257, True, arch="gpt2",
                       max_position_embeddings=1024),
    # meta-llama/Llama-2-13b-hf: 40 layers, hidden 5120, 40 heads (MHA), MLP 13824, vocab 32000.
    "llama-2-13b": ModelShape("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, False,
                              max_position_embeddings=4096),
    # meta-llama/Meta-Llama-3-8B: 32 layers, hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocab 128256.
    "llama-3-8b": ModelShape("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, False,
                             max_position_embeddings=8192),
    # HuggingFaceTB/SmolLM2-135M: 30 layers, hidden 576, 9 heads, 3 KV heads, MLP 1536, vocab 49152, tied.
    "smollm2-135m": ModelShape("smollm2-135m", 30, 576, 9, 3, 1536, 49152, True,
                               max_position_embeddings=8192),
    # Qwen/Qwen3-0.6B: 28 layers, hidden 1024, 16 heads, 8 KV heads, head_dim 128 (so q is 2048 wide,
    # wider than hidden), MLP 3072, vocab 151936, tied, q/k RMSNorm.
    "qwen3-0.6b": ModelShape("qwen3-0.6b", 28, 1024, 16, 8, 3072, 151936, True, head_dim=128,
                             max_position_embeddings=40960, qk_norm=True),
}


def get_preset(name: str) -> ModelShape:
    """The preset called `name` (see PRESETS)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _shape(shape: ModelShape | str) -> ModelShape:
    return get_preset(shape) if isinstance(shape, str) else shape


# ----------------------------------------------------------------------------------------------
# Weights and embeddings


def embedding_bytes(vocab_size: int, hidden_size: int, dtype: Any = "fp16") -> int:
    """Bytes of a (vocab_size, hidden_size) embedding table. 50,000 x 4,096 fp16 = 409,600,000."""
    n = _check_int("vocab_size", vocab_size) * _check_int("hidden_size", hidden_size)
    return math.ceil(n * dtype_bytes(dtype))


def embedding_fraction(shape: ModelShape | str) -> float:
    """Share of all parameters in the input embedding table (Llama-2-13B: about 1.3%)."""
    shape = _shape(shape)
    return shape.param_counts()["embedding"] / shape.num_params


def weight_bytes(params: ModelShape | str | int, dtype: Any = "fp16", *, group_size: int | None = None,
                 scale_bytes: float = 2) -> int:
    """Bytes to store `params` (a count, a shape or a preset name) in `dtype`.

    Quantized formats store one scale (and maybe a zero point or minimum) per group of
    `group_size` weights: `scale_bytes` per group. group_size=None means no scales (the lab's
    idealised 0.5 bytes per int4 weight). Real layouts: GPTQ/AWQ int4 use groups of 128 with an
    fp16 scale (2 bytes, plus a packed zero point); GGUF Q4_0 is 32 weights + one fp16 scale
    (18 bytes per 32), Q4_1 adds an fp16 minimum (20 bytes per 32), Q8_0 is int8 + fp16 scale
    (34 bytes per 32). Every tensor is quantized alike here; many tools keep embeddings in fp16.
    """
    n = params.num_params if isinstance(params, ModelShape) else (
        _shape(params).num_params if isinstance(params, str) else _check_int("num_params", params))
    payload = n * dtype_bytes(dtype)
    if group_size is None:
        return math.ceil(payload)
    _check_int("group_size", group_size)
    if scale_bytes < 0:
        raise ValueError(f"scale_bytes must be >= 0, got {scale_bytes}")
    return math.ceil(payload + math.ceil(n / group_size) * scale_bytes)


# ----------------------------------------------------------------------------------------------
# KV cache


def kv_cache_bytes_per_token(shape: ModelShape | str, kv_dtype: Any = "fp16") -> int:
    """2 (K and V) x layers x KV heads x head_dim x bytes. Llama-3-8B fp16: 131,072 (128 KiB)."""
    s = _shape(shape)
    return math.ceil(2 * s.num_hidden_layers * s.num_key_value_heads * s.head_dim * dtype_bytes(kv_dtype))


def kv_cache_bytes(shape: ModelShape | str, seq_len: int, batch_size: int = 1, kv_dtype: Any = "fp16") -> int:
    """KV bytes for `batch_size` sequences of `seq_len` tokens each (Llama-3-8B, 2,048: 0.25 GiB)."""
    per_token = kv_cache_bytes_per_token(shape, kv_dtype)
    return per_token * _check_int("seq_len", seq_len) * _check_int("batch_size", batch_size)


def kv_bytes_for_batch(bytes_per_token: int, seq_lens: Sequence[int]) -> int:
    """KV bytes of a batch whose sequences hold `seq_lens` tokens each (lengths may differ)."""
    if isinstance(bytes_per_token, bool) or not isinstance(bytes_per_token, int) or bytes_per_token < 0:
        raise ValueError(f"bytes_per_token must be an int >= 0, got {bytes_per_token!r}")
    for i, n in enumerate(seq_lens):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"seq_lens[{i}] = {n!r}: a sequence length is an int >= 0")
    return bytes_per_token * sum(seq_lens)


def max_sequences(gpu_memory_bytes: int, weight_bytes: int, bytes_per_token: int, seq_len: int,
                  gpu_memory_utilization: float = 0.9) -> int:
    """How many sequences of `seq_len` tokens fit in the KV cache, vLLM's way: the budget is
    int(utilization x GPU memory) - weights, and each sequence keeps its whole length.

    Raises ValueError when the weights alone do not fit in the usable memory (as `kv_cache_budget`
    does), since then not even one token fits.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if bytes_per_token < 1 or seq_len < 1:
        raise ValueError(f"bytes_per_token ({bytes_per_token}) and seq_len ({seq_len}) must both be >= 1")
    budget = int(gpu_memory_utilization * gpu_memory_bytes) - weight_bytes
    if budget <= 0:
        raise ValueError(
            f"the weights ({format_bytes(weight_bytes)}) do not fit in {gpu_memory_utilization:.0%} of "
            f"{format_bytes(gpu_memory_bytes)}: use a smaller weight dtype, a bigger GPU or a higher "
            "gpu_memory_utilization"
        )
    return budget // (bytes_per_token * seq_len)


# ----------------------------------------------------------------------------------------------
# GPUs


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures of one accelerator. Override any of them with `get_gpu(name, field=...)`."""

    name: str
    memory_bytes: int  # capacity; HBM "80 GB" parts hold 80 GiB (the driver reports a little less)
    memory_bandwidth: float  # bytes/s, peak
    peak_flops: float  # dense bf16/fp16 tensor-core FLOP/s with fp32 accumulate (no sparsity)
    note: str = ""

    def __post_init__(self) -> None:
        _check_int("memory_bytes", self.memory_bytes)
        for f in ("memory_bandwidth", "peak_flops"):
            v = getattr(self, f)
            if not (isinstance(v, numbers.Real) and v > 0):
                raise ValueError(f"{f} must be a positive number, got {v!r}")


GPUS: dict[str, GPUSpec] = {
    "A100-40GB": GPUSpec("A100-40GB", 40 * 2**30, 1.555e12, 312e12, "SXM4, HBM2; datasheet"),
    "A100-80GB": GPUSpec("A100-80GB", 80 * 2**30, 2.039e12, 312e12, "SXM4, HBM2e; datasheet"),
    "H100-SXM": GPUSpec("H100-SXM", 80 * 2**30, 3.35e12, 989.4e12, "HBM3; 1,979 TFLOP/s is with sparsity"),
    # Datasheet: 141 GB; nvidia-smi on this project's H200 machines shows 143,771 MiB (used here).
    # Measured there: ~4.3 TB/s device-to-device copy, ~790 TFLOP/s bf16 matmul (8192^3, random data).
    "H200": GPUSpec("H200", 143_771 * 2**20, 4.8e12, 989.4e12, "SXM, HBM3e; same compute as H100-SXM"),
    "RTX-4090": GPUSpec("RTX-4090", 24 * 2**30, 1.008e12, 165.2e12,
                        "GDDR6X; Ada whitepaper, fp32 accumulate"),
    # Not a datasheet: a typical laptop (dual-channel DDR5, a few CPU cores). Measure your own.
    "laptop-cpu": GPUSpec("laptop-cpu", 16 * 2**30, 60e9, 1e12, "illustrative, not a datasheet"),
}


def get_gpu(gpu: GPUSpec | str, **overrides: Any) -> GPUSpec:
    """A GPU from GPUS by name (or a GPUSpec), with any field overridden (e.g. memory_bandwidth=3e12)."""
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise ValueError(f"unknown GPU {gpu!r}: choose one of {sorted(GPUS)} or pass a GPUSpec")
        gpu = GPUS[gpu]
    known = {f.name for f in fields(GPUSpec)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown GPUSpec field(s) {sorted(bad)}: use {sorted(known)}")
    return replace(gpu, **overrides) if overrides else gpu


def gpus_needed(total_bytes: int, gpu: GPUSpec | str) -> int:
    """Fewest GPUs whose memory adds up to `total_bytes`, assuming perfect sharding (a lower bound)."""
    return math.ceil(total_bytes / get_gpu(gpu).memory_bytes)


def gpu_headroom(total_bytes: int, gpu: GPUSpec | str, num_gpus: int | None = None) -> dict[str, float]:
    """How full `num_gpus` GPUs (default: `gpus_needed`) are when they hold `total_bytes`:
    {"num_gpus", "capacity", "fraction_used", "headroom_bytes"}. The memory-only count leaves no room
    for the CUDA context (several hundred MB per GPU), the allocator's fragmentation or temporary
    buffers, so a fraction near 1 means a real run needs more GPUs (or sharding, offload, recompute)."""
    g = get_gpu(gpu)
    n = gpus_needed(total_bytes, g) if num_gpus is None else _check_int("num_gpus", num_gpus)
    capacity = n * g.memory_bytes
    return {"num_gpus": n, "capacity": capacity, "fraction_used": total_bytes / capacity,
            "headroom_bytes": capacity - total_bytes}


def kv_cache_budget(shape: ModelShape | str, gpu: GPUSpec | str, *, gpu_memory_utilization: float = 0.9,
                    weight_dtype: Any = "bf16", activation_bytes: int = 0) -> int:
    """Bytes left for the KV cache: utilization x GPU memory - weights - activation peak (vLLM's rule)."""
    gpu = get_gpu(gpu)
    usable = int(_check_fraction("gpu_memory_utilization", gpu_memory_utilization) * gpu.memory_bytes)
    weights = weight_bytes(_shape(shape), weight_dtype)
    budget = usable - weights - activation_bytes
    if budget <= 0:
        raise ValueError(
            f"{_shape(shape).name} weights in {weight_dtype} ({format_bytes(weights)}) plus activations "
            f"do not fit in {gpu_memory_utilization:.0%} of {gpu.name} ({format_bytes(usable)}): use a "
            "smaller dtype, a bigger GPU or a higher gpu_memory_utilization")
    return budget


def max_num_seqs(shape: ModelShape | str, gpu: GPUSpec | str, seq_len: int, *,
                 gpu_memory_utilization: float = 0.9, weight_dtype: Any = "bf16", kv_dtype: Any = "bf16",
                 activation_bytes: int = 0) -> int:
    """How many sequences of `seq_len` tokens fit in the KV budget (whole-length, no sharing)."""
    budget = kv_cache_budget(shape, gpu, gpu_memory_utilization=gpu_memory_utilization,
                             weight_dtype=weight_dtype, activation_bytes=activation_bytes)
    return budget // kv_cache_bytes(shape, seq_len, 1, kv_dtype)


# ----------------------------------------------------------------------------------------------
# Footprints: training against inference

_RECOMPUTE = ("none", "selective", "full")
_OPTIMIZER_BYTES = {"adam": 8, "sgd_momentum": 4, "sgd": 0}  # fp32 states per parameter


def training_activation_bytes(shape: ModelShape | str, batch_size: int, seq_len: int,
                              recompute: str = "none") -> int:
    """Activations kept for the backward pass, from Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models" (arXiv:2205.05198), with 16-bit activations, no
    tensor/sequence parallelism, summed over layers:

        none       s*b*h*(34 + 5*a*s/h) per layer  (5*a*s/h: the (a, s, s) attention score tensors)
        selective  34*s*b*h per layer              (scores recomputed in the backward pass)
        full       2*s*b*h per layer               (only each layer's input; everything recomputed)

    The paper counts a GPT-style layer (MLP 4h wide, dropout); for Llama's gated MLP it is an
    estimate. Logits (b*s*V) and the optimizer's temporaries are not included.
    """
    s_ = _shape(shape)
    s, b = _check_int("seq_len", seq_len), _check_int("batch_size", batch_size)
    h, a, L = s_.hidden_size, s_.num_attention_heads, s_.num_hidden_layers
    if recompute == "none":
        per_layer = s * b * h * 34 + 5 * a * s * s * b  # = s*b*h*(34 + 5*a*s/h), kept in integers
    elif recompute == "selective":
        per_layer = 34 * s * b * h
    elif recompute == "full":
        per_layer = 2 * s * b * h
    else:
        raise ValueError(f"recompute must be one of {_RECOMPUTE}, got {recompute!r}")
    return L * per_layer


def inference_activation_bytes(shape: ModelShape | str, batch_size: int, seq_len: int,
                               act_dtype: Any = "fp16") -> int:
    """Peak transient activations of one forward pass over `batch_size` x `seq_len` new tokens.

    Nothing is kept across layers, so the peak is one layer's working set: the residual stream and
    its normalised copy (2h) and the MLP's gate, up and product tensors (3 x intermediate), per token,
    with attention computed without materialising the (s, s) scores (flash/paged kernels); plus
    fp32 logits for the last position of each sequence (b x V x 4).
    """
    s_ = _shape(shape)
    tokens = _check_int("batch_size", batch_size) * _check_int("seq_len", seq_len)
    per_token = (2 * s_.hidden_size + 3 * s_.intermediate_size) * dtype_bytes(act_dtype)
    return math.ceil(tokens * per_token) + batch_size * s_.vocab_size * 4


@dataclass(frozen=True)
class Footprint:
    """Bytes per component; `total` is their sum. Components a mode does not have are 0."""

    weights: int
    gradients: int = 0
    master_weights: int = 0  # fp32 copy kept by mixed-precision training
    optimizer_states: int = 0  # Adam: m and v in fp32
    activations: int = 0
    kv_cache: int = 0

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def training_footprint(shape: ModelShape | str, batch_size: int = 1, seq_len: int = 2048, *,
                       param_dtype: Any = "bf16", master_weights: bool = True, optimizer: str = "adam",
                       recompute: str = "none") -> Footprint:
    """Memory of one data-parallel replica training with Adam in mixed precision (no sharding).

    Per parameter (Micikevicius et al. 2018 "Mixed Precision Training"; Rajbhandari et al. 2020
    "ZeRO", section 3.1): 16-bit weights 2 + 16-bit gradients 2 + fp32 master weights 4 + Adam m
    and v in fp32 4 + 4 = 16 bytes. Activations: `training_activation_bytes`. Set
    master_weights=False for pure 16-bit training; optimizer="sgd_momentum" or "sgd" for 4 or 0 bytes.
    """
    s_ = _shape(shape)
    if optimizer not in _OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZER_BYTES)}, got {optimizer!r}")
    n = s_.num_params
    return Footprint(
        weights=weight_bytes(n, param_dtype),
        gradients=weight_bytes(n, param_dtype),
        master_weights=4 * n if master_weights else 0,
        optimizer_states=_OPTIMIZER_BYTES[optimizer] * n,
        activations=training_activation_bytes(s_, batch_size, seq_len, recompute),
    )


def inference_footprint(shape: ModelShape | str, batch_size: int = 1, seq_len: int = 2048, *,
                        weight_dtype: Any = "fp16", kv_dtype: Any = "fp16", group_size: int | None = None,
                        scale_bytes: float = 2) -> Footprint:
    """Weights (any dtype, see `weight_bytes`), KV cache for batch_size x seq_len tokens, and the
    peak transient activations of a prefill of that size (`inference_activation_bytes`)."""
    s_ = _shape(shape)
    return Footprint(
        weights=weight_bytes(s_, weight_dtype, group_size=group_size, scale_bytes=scale_bytes),
        kv_cache=kv_cache_bytes(s_, seq_len, batch_size, kv_dtype),
        activations=inference_activation_bytes(s_, batch_size, seq_len),
    )


# ----------------------------------------------------------------------------------------------
# The lab's §2.3 table, as printed and corrected

Cell = int | tuple[int, int] | str | None  # bytes, a (low, high) range in bytes, text, or N/A


@dataclass(frozen=True)
class TableRow:
    """One row of a footprint table: training, inference fp16, inference int4, and a note."""

    component: str
    training: Cell
    inference_fp16: Cell
    inference_int4: Cell
    note: str = ""


_NOMINAL_13B = 13 * 10**9  # the lab rounds the parameter count to 13e9


def lab_table_13b() -> list[TableRow]:
    """The lab's §2.3 table, recomputed from its own assumptions (13e9 parameters; training with
    2 bytes weights + 2 bytes gradients + 4 bytes "optimizer states" per parameter). The notes say
    which rows hold and which do not (its optimizer row counts 4 bytes per parameter where Adam's two
    fp32 moments take 8)."""
    n = _NOMINAL_13B
    fp16, int4 = weight_bytes(n, "fp16"), weight_bytes(n, "int4")
    lab_optimizer = 4 * n  # 52 GB: what the lab printed
    act = (40 * 10**9, 80 * 10**9)
    return [
        TableRow("Weights", fp16, fp16, int4, "right: 13e9 x 2 bytes = 26 GB; x 0.5 bytes = 6.5 GB "
                 "(int4 before per-group scales)"),
        TableRow("Gradients", fp16, 0, 0, "right: one 16-bit gradient per parameter"),
        TableRow("Optimizer states", lab_optimizer, 0, 0, "wrong: Adam keeps m and v in fp32, 8 bytes/param "
                 "= 104 GB, plus a 52 GB fp32 master copy in mixed precision"),
        TableRow("Activations", act, (0, 10**9), (0, 10**9), "depends on batch and sequence length: "
                 "see training_activation_bytes / inference_activation_bytes"),
        TableRow("KV cache", None, "dynamic", "dynamic", "grows with batch x tokens: kv_cache_bytes"),
        TableRow("Total", fp16 + fp16 + lab_optimizer + act[0], "26 GB + cache", "6.5 GB + cache",
                 "the training total inherits the optimizer error: 16 bytes/param = 208 GB "
                 "before activations"),
        TableRow("Hardware", "8x H100 (80GB)", "1x H100 (80GB)", "1x RTX 4090 (24GB)", ""),
    ]


def corrected_table_13b(shape: ModelShape | str = "llama-2-13b", batch_size: int = 1, seq_len: int = 2048,
                        *, recompute: str = "none", int4_group_size: int | None = 128) -> list[TableRow]:
    """The §2.3 table recomputed for a real 13B shape (Llama-2-13B: 13,015,864,320 parameters).

    Training: mixed-precision Adam (16 bytes/param, `training_footprint`) with activations for
    batch_size x seq_len (`recompute` as in `training_activation_bytes`). Inference: fp16 weights, or
    int4 with an fp16 scale per `int4_group_size` weights; KV cache and activations for
    batch_size x seq_len. Hardware: fewest GPUs whose memory holds the total (perfect sharding).
    """
    s_ = _shape(shape)
    train = training_footprint(s_, batch_size, seq_len, recompute=recompute)
    inf16 = inference_footprint(s_, batch_size, seq_len)
    inf4 = inference_footprint(s_, batch_size, seq_len, weight_dtype="int4", group_size=int4_group_size)

    def hw(total: int, gpu: str) -> str:
        return f"{gpus_needed(total, gpu)}x {gpu}"

    return [
        TableRow("Weights", train.weights, inf16.weights, inf4.weights, f"{s_.num_params:,} parameters"),
        TableRow("Gradients", train.gradients, 0, 0, "bf16, one per parameter"),
        TableRow("fp32 master weights", train.master_weights, 0, 0, "4 bytes/param, kept by mixed precision"),
        TableRow("Optimizer states", train.optimizer_states, 0, 0, "Adam m and v in fp32: 8 bytes/param"),
        TableRow("Activations", train.activations, inf16.activations, inf4.activations,
                 f"batch {batch_size} x {seq_len} tokens; training recompute={recompute!r}"),
        TableRow("KV cache", None, inf16.kv_cache, inf4.kv_cache,
                 f"batch {batch_size} x {seq_len} tokens, fp16"),
        TableRow("Total", train.total, inf16.total, inf4.total, ""),
        TableRow("Hardware (memory only)", hw(train.total, "H100-SXM"), hw(inf16.total, "H100-SXM"),
                 hw(inf4.total, "RTX-4090"), "fewest GPUs whose memory sums to the total, with no "
                 "headroom: see gpu_headroom"),
    ]


def format_table(rows: list[TableRow], unit: str = "GB", precision: int = 1) -> str:
    """A Markdown table of `rows` with byte cells in `unit` (a notebook shows it with Markdown())."""

    def cell(c: Cell) -> str:
        if c is None:
            return "N/A"
        if isinstance(c, str):
            return c
        if isinstance(c, tuple):
            lo, hi = (format_bytes(x, unit, precision).split()[0] for x in c)
            return f"<{hi} {unit}" if c[0] == 0 else f"{lo}-{hi} {unit}"
        return "0" if c == 0 else format_bytes(c, unit, precision)

    lines = ["| Component | Training (Adam) | Inference fp16 | Inference int4 | Note |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = (r.component, cell(r.training), cell(r.inference_fp16), cell(r.inference_int4), r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Roofline lower bounds: decode and prefill


def forward_flops(shape: ModelShape | str, num_new_tokens: int, context_len: int = 0,
                  batch_size: int = 1) -> int:
    """FLOPs of one forward pass over `num_new_tokens` per sequence that follow `context_len`
    cached tokens, for `batch_size` sequences.

    Matmuls: 2 FLOPs per layer weight per token, plus the lm_head for the last position only (the
    only logits generation needs). Attention: QK^T and PV cost 2 x 2 x heads x head_dim per
    (query, key) pair; with causal masking the i-th new token sees context_len + i keys.
    """
    s_ = _shape(shape)
    t = _check_int("num_new_tokens", num_new_tokens)
    ctx = _check_int("context_len", context_len, minimum=0)
    b = _check_int("batch_size", batch_size)
    matmul = 2 * s_.num_layer_params * t + 2 * s_.vocab_size * s_.hidden_size
    pairs = t * ctx + t * (t + 1) // 2  # (query, key) pairs under the causal mask
    attention = 4 * s_.num_hidden_layers * s_.num_attention_heads * s_.head_dim * pairs
    return b * (matmul + attention)


@dataclass(frozen=True)
class StepBound:
    """A roofline lower bound: the step can be no faster than moving its bytes or doing its FLOPs."""

    flops: int
    bytes_moved: int
    compute_s: float  # flops / peak FLOP/s
    memory_s: float  # bytes / peak bandwidth

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"


def _weights_read(shape: ModelShape, weight_dtype: Any, batch_size: int) -> int:
    """Weight bytes one forward must read: all weights except an untied input embedding table,
    of which only the batch's rows are read (a tied table is read whole, as the lm_head)."""
    read = shape.num_params
    if not shape.tie_word_embeddings:
        read -= shape.param_counts()["embedding"] - batch_size * shape.hidden_size
    return weight_bytes(read, weight_dtype)


def decode_step_bound(shape: ModelShape | str, gpu: GPUSpec | str, *, batch_size: int = 1,
                      context_len: int = 0, weight_dtype: Any = "bf16", kv_dtype: Any = "bf16") -> StepBound:
    """Lower bound on one decode step: every weight is read once, each sequence reads its
    `context_len` cached tokens' K/V and writes one new token's. Llama-2-13B in fp16 on H100-SXM:
    7.7 ms, not the < 0.1 ms sometimes quoted."""
    s_, gpu = _shape(shape), get_gpu(gpu)
    b = _check_int("batch_size", batch_size)
    ctx = _check_int("context_len", context_len, minimum=0)
    kv = kv_cache_bytes_per_token(s_, kv_dtype) * b * (ctx + 1)
    moved = _weights_read(s_, weight_dtype, b) + kv
    flops = forward_flops(s_, 1, ctx, b)
    return StepBound(flops, moved, flops / gpu.peak_flops, moved / gpu.memory_bandwidth)


def prefill_bound(shape: ModelShape | str, gpu: GPUSpec | str, num_tokens: int, *, batch_size: int = 1,
                  weight_dtype: Any = "bf16", kv_dtype: Any = "bf16") -> StepBound:
    """Lower bound on prefilling `num_tokens` prompt tokens for each of `batch_size` sequences:
    usually compute-bound (FLOPs / peak FLOP/s) once num_tokens is in the hundreds."""
    s_, gpu = _shape(shape), get_gpu(gpu)
    b = _check_int("batch_size", batch_size)
    t = _check_int("num_tokens", num_tokens)
    moved = _weights_read(s_, weight_dtype, b * t) + kv_cache_bytes(s_, t, b, kv_dtype)
    flops = forward_flops(s_, t, 0, b)
    return StepBound(flops, moved, flops / gpu.peak_flops, moved / gpu.memory_bandwidth)


# ----------------------------------------------------------------------------------------------
# Chapter 3: what the KV cache saves (token-forwards with and without it)


def token_forwards(num_tokens: int, cached: bool) -> int:
    """Token positions pushed through the whole model to produce `num_tokens` tokens one at a time.

    Without a cache step i re-runs all i positions: 1 + 2 + ... + n = n(n+1)/2 (5,050 for 100).
    With a cache each step runs only the new position: n (100)."""
    n = _check_int("num_tokens", num_tokens)
    return n if cached else n * (n + 1) // 2


def attention_dot_products(num_tokens: int, cached: bool) -> int:
    """Query-key dot products per head per layer to produce `num_tokens` tokens one at a time.

    With a cache step i still attends its one new query over all i keys: 1 + 2 + ... + n =
    n(n+1)/2 (5,050 for 100); the cache does not make attention O(1) per step. Without a cache step
    i recomputes i causal rows, sum_j j = i(i+1)/2, so the total is n(n+1)(n+2)/6 (171,700 for 100)."""
    n = _check_int("num_tokens", num_tokens)
    return n * (n + 1) // 2 if cached else n * (n + 1) * (n + 2) // 6
