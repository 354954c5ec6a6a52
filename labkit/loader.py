"""Every way to fill labkit's model with weights, and the one GGUF reader.

  load_gguf(path=None)       the SmolLM2 GGUF asset (or any llama / qwen2 / qwen3 GGUF), dequantized to
                             float; converted once and cached as safetensors under
                             labkit.assets.home()/"converted"/<gguf sha256>.safetensors
  from_hf_dir(path)          a local Hugging Face folder (config.json + *.safetensors / *.bin)
  from_hf_model(hf_model)    an in-memory transformers model (Llama, Qwen2, Qwen3)
  random_model(config, seed) random weights, for tests and for shapes
  load_model(name_or_path)   any of the above by name, path or object, with its tokenizer (for LLM)

Each returns a model in eval mode. `config_from_hf` turns a transformers config into a ModelConfig
and refuses the features the model does not implement. `open_gguf` is the GGUF reader that the
loader and labkit.measure use (labkit.tokenizer reads only a GGUF's metadata, with its own
torch-free parser, since chapter 1 has no model).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from labkit.attention import DEFAULT_BACKEND
from labkit.model import LlamaForCausalLM, ModelConfig

GGUF_ASSET = "smollm2-135m-instruct-q4_1"
SMOLLM2_NAMES = ("smollm2-135m-instruct", "smollm2-135m-instruct-q4_1")  # names load_model knows
_CONVERTED_FORMAT = "labkit-converted-gguf-v1"  # bump when the converted file layout changes


def config_from_hf(hf_config) -> ModelConfig:
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
    return ModelConfig(
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
    config = config_from_hf(hf_model.config)
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
    config = config_from_hf(AutoConfig.from_pretrained(path, local_files_only=True))
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


def open_gguf(path: str | os.PathLike | None = None):
    """A gguf.GGUFReader over a GGUF file (default: the SmolLM2-135M-Instruct asset): the one reader of
    GGUF tensors in labkit (the loader's and labkit.measure's)."""
    from gguf import GGUFReader

    from labkit import assets

    return GGUFReader(assets.path(GGUF_ASSET) if path is None else path)


def _convert_gguf(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig, str, str | None]:
    """Read and dequantize every tensor of a GGUF; q/k rows put back in HF order (llama arch only)."""
    import numpy as np
    from gguf.quants import dequantize

    reader = open_gguf(path)
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


def load_model(
    model: str | os.PathLike | torch.nn.Module,
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.nn.Module, Any]:
    """(labkit model, tokenizer) from a name, a .gguf path, a Hugging Face folder or a loaded model.
    dtype, device None: a loaded model's own, else float32 on the CPU."""
    if isinstance(model, torch.nn.Module):
        if not isinstance(model, LlamaForCausalLM):  # a transformers model: copy its weights
            param = next(model.parameters())
            model = from_hf_model(model, dtype=dtype or param.dtype).to(device or param.device)
        return model, tokenizer
    dtype, device = dtype or torch.float32, device or "cpu"
    name = os.fspath(model)
    if name.lower() in SMOLLM2_NAMES:
        from labkit import assets

        path = assets.path(GGUF_ASSET)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model={name!r} is neither a known name ({', '.join(SMOLLM2_NAMES)}) nor "
                f"an existing .gguf file or Hugging Face folder"
            )
    if path.is_dir():
        loaded = from_hf_dir(path, dtype=dtype, device=device)
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if tokenizer is None and has_tokenizer:  # otherwise no tokenizer: prompts must be token ids
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return loaded, tokenizer
    loaded, _ = load_gguf(path, dtype=dtype, device=device)
    if tokenizer is None:
        from labkit.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_gguf(path)
    return loaded, tokenizer


__all__ = [
    "GGUF_ASSET",
    "GGUFInfo",
    "config_from_hf",
    "converted_path",
    "from_hf_dir",
    "from_hf_model",
    "load_gguf",
    "load_model",
    "load_state_dict",
    "open_gguf",
    "random_model",
    "unpermute_gguf_qk",
]
