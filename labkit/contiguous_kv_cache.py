"""The simplest real KV cache: one preallocated, contiguous buffer per layer (chapter 3).

    cache = ContiguousKVCache(num_layers=2, max_len=64, num_kv_heads=2, head_dim=16)
    cache.append(layer, k, v)          # k, v (T_new, H_kv, D): written at rows len .. len + T_new - 1
    k_all, v_all = cache.view(layer)   # (len, H_kv, D) views of the buffer: no copy
    logits = forward(model, cache, new_ids)   # labkit's Llama model over this cache: (vocab,)

Row t of layer l's buffer holds token t's key and value: the address of a token is its position.
Chapter 4's paged cache keeps the same append/view contract and changes only that addressing (a block
table maps position t to block t // block_size, offset t % block_size).

`forward` runs a labkit `LlamaForCausalLM` (SmolLM2, or a random tiny one) layer by layer with dense
causal attention over this cache, calling the cache's `append` then `view` in every layer, so any
object with those two methods and `len()` can be plugged in (the chapter's graded cache is).
What it does not do: batch several sequences, or free and reuse rows (one sequence, append only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ContiguousKVCache", "forward", "for_model"]


class ContiguousKVCache:
    """K and V of one sequence: a (num_layers, max_len, num_kv_heads, head_dim) buffer each, allocated once."""

    def __init__(self, num_layers: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32) -> None:
        for name, value in (("num_layers", num_layers), ("max_len", max_len), ("num_kv_heads", num_kv_heads),
                            ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.max_len = max_len
        self.k = torch.zeros(num_layers, max_len, num_kv_heads, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.lengths = [0] * num_layers  # tokens written in each layer

    def __len__(self) -> int:
        """Tokens cached: those of the last layer, which a forward pass fills last."""
        return self.lengths[-1]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k, v (T_new, H_kv, D) after the tokens layer `layer` already holds."""
        start = self.lengths[layer]
        end = start + k.shape[0]
        if end > self.max_len:
            raise ValueError(
                f"layer {layer} holds {start} tokens; {k.shape[0]} more would make {end} > max_len "
                f"{self.max_len}. Fix: build the cache with a larger max_len"
            )
        self.k[layer, start:end] = k
        self.v[layer, start:end] = v
        self.lengths[layer] = end

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) of layer `layer`, each (tokens held, H_kv, D): views of the buffer, not copies."""
        n = self.lengths[layer]
        return self.k[layer, :n], self.v[layer, :n]


def for_model(cache_cls: type, model: torch.nn.Module, max_len: int):
    """A `cache_cls(num_layers, max_len, num_kv_heads, head_dim, dtype)` sized for labkit's `model`."""
    c = model.config
    return cache_cls(c.num_hidden_layers, max_len, c.num_key_value_heads, c.head_dim, model.dtype)


@torch.inference_mode()
def forward(model: torch.nn.Module, cache, new_ids: Sequence[int]) -> torch.Tensor:
    """Run `new_ids` through labkit's Llama `model` at positions len(cache), len(cache) + 1, ...,
    appending their K/V to `cache` layer by layer; returns the logits after the last new token (vocab,).
    A model that another process runs for the caller (labkit/grading/served.py, in chapter 3's checks)
    runs the tokens itself and appends their K/V to `cache` the same way."""
    if hasattr(model, "served_forward"):
        return model.served_forward(cache, new_ids)
    ids = torch.tensor([int(t) for t in new_ids], dtype=torch.int64, device=model.device)  # (T,)
    if ids.numel() == 0:
        raise ValueError("forward needs at least one new token id")
    start, T = len(cache), ids.numel()
    positions = torch.arange(start, start + T, device=model.device)
    inner = model.model
    cos, sin = inner.rotary_emb(positions)  # (T, D) each
    h = inner.embed_tokens(ids)  # (T, hidden)
    # query i (position start + i) sees keys 0 .. start + i
    mask = torch.ones(T, start + T, dtype=torch.bool, device=model.device).tril(diagonal=start)
    for index, layer in enumerate(inner.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        q, k, v = attn.qkv(x, cos, sin)  # (T, H, D), (T, H_kv, D), (T, H_kv, D)
        cache.append(index, k, v)
        k_all, v_all = cache.view(index)  # (start + T, H_kv, D)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1), k_all.transpose(0, 1), v_all.transpose(0, 1),
            attn_mask=mask, scale=attn.scale, enable_gqa=True,
        ).transpose(0, 1)  # (T, H, D)
        h = h + attn.o_proj(o.reshape(T, attn.num_heads * attn.head_dim))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.compute_logits(inner.norm(h)[-1:])[0]  # (vocab,) float32
