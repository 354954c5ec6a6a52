"""Typical mistakes in solutions/lab0.1/03_kv_cache.ipynb (format: tests/mistakes/README.md)."""

from notebook_tools import Mistake

MISTAKES = [
    Mistake(
        "cached-attention-is-one-per-step",  # the lab's "100 attention computations" (ERRATA 10)
        cell="t3-2-attention-dot-products",
        find="return n * (n + 1) // 2  # step i: one query against i keys",
        replace="return n  # step i: one query",
        lost=["t3-2-attention-dot-products-tests"],
        says="wrong result",
    ),
    Mistake(
        "gqa-heads-tiled-not-grouped",  # repeat() maps query head h to KV head h % H_kv, not h // group
        cell="t3-3-attend-one-step",
        find="k = k_cache.repeat_interleave(group, dim=1)",
        replace="k = k_cache.repeat(1, group, 1)",
        also=[
            (
                "t3-3-attend-one-step",
                "v = v_cache.repeat_interleave(group, dim=1)",
                "v = v_cache.repeat(1, group, 1)",
            )
        ],
        lost=["t3-3-attend-one-step-tests"],
        says="wrong result",
    ),
    Mistake(
        "softmax-written-out",  # still right: exp / sum instead of torch.softmax
        cell="t3-3-attend-one-step",
        find="weights = torch.softmax(scores, dim=-1)",
        replace="weights = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)",
        lost=[],
    ),
    Mistake(
        "kv-bytes-without-factor-2",  # counts the keys and forgets the values
        cell="t3-4-kv-bytes-per-token",
        find="return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes",
        replace="return num_layers * num_kv_heads * head_dim * dtype_bytes",
        lost=["t3-4-kv-bytes-per-token-tests"],
        says="wrong result",
    ),
    Mistake(
        "cached-loop-recomputes",  # builds a cache, then re-runs the whole sequence anyway
        cell="t3-8-generate-cached",
        find="logits = cache.forward([token])  # decode: only the new token",
        replace="logits = measure.last_token_logits(model, list(prompt_ids) + new_ids)",
        lost=["t3-8-generate-cached-tests"],
        says="your code called",
    ),
    Mistake(
        "pow2-region-not-capped",  # a power of two above max_model_len is never reserved
        cell="t3-9-reservation-slots",
        find="region = min(1 << (final - 1).bit_length(), max_model_len)",
        replace="region = 1 << (final - 1).bit_length()",
        lost=["t3-9-reservation-slots-tests"],
        says="wrong result",
    ),
]
