"""Typical mistakes in solutions/lab0.1/03_kv_cache.ipynb (format: tests/mistakes/README.md)."""

from notebook_tools import Mistake

MISTAKES = [
    Mistake(
        "cached-attention-is-one-per-step",  # the widely repeated "100 attention computations"
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
        "kv-bytes-without-factor-2",  # counts the keys and forgets the values
        cell="t3-4-kv-cache-bytes",
        find="per_token = 2 * num_layers * num_kv_heads * head_dim * dtype_bytes",
        replace="per_token = num_layers * num_kv_heads * head_dim * dtype_bytes",
        lost=["t3-4-kv-cache-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "cached-loop-recomputes",  # builds a cache, then re-runs the whole sequence anyway
        cell="t3-8-generate-cached",
        find="logits = lck.forward(model, cache, [token])  # decode: only the new token",
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
    Mistake(
        "pow2-region-off-at-exact-powers",  # the next power of two ABOVE the length: 64 tokens get 128
        cell="t3-9-reservation-slots",
        find="region = min(1 << (final - 1).bit_length(), max_model_len)",
        replace="region = min(1 << final.bit_length(), max_model_len)",
        lost=["t3-9-reservation-slots-tests"],
        says="wrong result",
    ),
    Mistake(
        "contiguous-cache-overwrites-on-append",  # every append writes at row 0
        cell="t3-6-contiguous-cache",
        find="        self.k[layer, start:end] = k  # write into the buffer: no new tensor\n"
        "        self.v[layer, start:end] = v",
        replace="        self.k[layer, : end - start] = k\n        self.v[layer, : end - start] = v",
        lost=["t3-6-contiguous-cache-tests"],
        says="wrong result",
    ),
    Mistake(
        "contiguous-cache-not-written",  # costs Task 6 only: the cached loop is checked with labkit's cache
        cell="t3-6-contiguous-cache",
        find="        self.max_len = max_len\n",
        replace='        raise NotImplementedError("Task 6: a contiguous KV cache (t3-6-contiguous-cache)")\n',
        lost=["t3-6-contiguous-cache-tests"],
        says="not written yet: `__init__` raised NotImplementedError",
        alone=True,  # the point: no later task pays for it, so no later mistake may share its run
    ),
    Mistake(
        "softmax-written-out",  # still right: exp / sum instead of torch.softmax
        cell="t3-3-attend-one-step",
        find="weights = torch.softmax(scores, dim=-1)",
        replace="weights = scores.exp() / scores.exp().sum(dim=-1, keepdim=True)",
        lost=[],
    ),
    Mistake(
        "contiguous-cache-copies-on-append",  # right values, but a new buffer at every append (like torch.cat)
        cell="t3-6-contiguous-cache",
        find="        self.k[layer, start:end] = k  # write into the buffer: no new tensor\n",
        replace="        self.k, self.v = self.k.clone(), self.v.clone()\n        self.k[layer, start:end] = k\n",
        lost=["t3-6-contiguous-cache-tests"],
        says="wrong result",
    ),
]
