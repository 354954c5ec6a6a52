"""Typical mistakes in solutions/lab0.1/04_paged_attention.ipynb (format: tests/mistakes/README.md)."""

from notebook_tools import Mistake

MISTAKES = [
    Mistake(
        "blocks-through-float-ceil",  # math.ceil(n / b) rounds through a float: wrong past 2**53
        cell="t4-1-blocks-needed",
        find="return (num_tokens + block_size - 1) // block_size",
        replace="return math.ceil(num_tokens / block_size)",
        lost=["t4-1-blocks-needed-tests"],
        says="wrong result",
    ),
    Mistake(
        "free-ignores-reference-counts",  # a shared block is freed while another request still holds it
        cell="t4-2-block-allocator",
        find="        self.ref_counts[block_id] -= 1\n        if self.ref_counts[block_id] == 0:\n",
        replace="        self.ref_counts[block_id] = 0\n        if True:\n",
        lost=["t4-2-block-allocator-tests"],
        says="shortest failing sequence",
    ),
    Mistake(
        "freed-blocks-never-reused",  # free drops the count but never returns the block to the queue
        cell="t4-2-block-allocator",
        find="            self.free_queue.appendleft(block_id)",
        replace="            pass",
        lost=["t4-2-block-allocator-tests"],
        says="wrong result",
    ),
    Mistake(
        "double-free-accepted",  # no check: a second free drives the count negative
        cell="t4-2-block-allocator",
        find="        if not 0 <= block_id < len(self.ref_counts) or self.ref_counts[block_id] == 0:\n"
        "            raise ValueError(f\"block {block_id} is not held by anyone: a double free?\")\n",
        replace="",
        lost=["t4-2-block-allocator-tests"],
        says="raises ValueError",
    ),
    Mistake(
        "allocator-on-a-plain-list",  # still right: a list used as the queue (slower, same order)
        cell="t4-2-block-allocator",
        find="self.free_queue = collections.deque(range(num_blocks))  # front = next to hand out",
        replace="self.free_queue = list(range(num_blocks))",
        also=[
            ("t4-2-block-allocator", "block_id = self.free_queue.popleft()", "block_id = self.free_queue.pop(0)"),
            ("t4-2-block-allocator", "self.free_queue.appendleft(block_id)", "self.free_queue.insert(0, block_id)"),
        ],
        lost=[],
    ),
    Mistake(
        "grows-half-a-table",  # allocates until the pool is empty, then fails with blocks taken
        cell="t4-3-allocate-slots",
        find="    if missing > allocator.num_free_blocks:\n        return False\n    for _ in range(missing):\n",
        replace="    for _ in range(missing):\n        if allocator.num_free_blocks == 0:\n            return False\n",
        lost=["t4-3-allocate-slots-tests"],
        says="shortest failing sequence",
    ),
    Mistake(
        "slot-forgets-block-size",  # block id + offset instead of block id * block_size + offset
        cell="t4-4-slot-mapping",
        find="block_table[p // block_size] * block_size + p % block_size",
        replace="block_table[p // block_size] + p % block_size",
        lost=["t4-4-slot-mapping-tests"],
        says="wrong result",
    ),
    Mistake(
        "attention-ignores-block-table",  # reads the first physical blocks, not the request's
        cell="t4-5-paged-decode-attention",
        find="    k = k_cache[block_table].flatten(0, 1)[:seq_len]  # (seq_len, H_kv, D), in logical order\n"
        "    v = v_cache[block_table].flatten(0, 1)[:seq_len]",
        replace="    k = k_cache[:len(block_table)].flatten(0, 1)[:seq_len]\n"
        "    v = v_cache[:len(block_table)].flatten(0, 1)[:seq_len]",
        lost=["t4-5-paged-decode-attention-tests"],
        says="wrong result",
    ),
    Mistake(
        "attention-with-sdpa",  # still right: torch's scaled_dot_product_attention with GQA
        cell="t4-5-paged-decode-attention",
        find="    group = num_heads // k.shape[1]\n"
        "    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (seq_len, H, D)\n"
        "    scores = torch.einsum(\"hd,thd->ht\", q, k) / math.sqrt(head_dim)\n"
        "    return torch.einsum(\"ht,thd->hd\", torch.softmax(scores, dim=-1), v)",
        replace="    out = torch.nn.functional.scaled_dot_product_attention(\n"
        "        q[:, None], k.transpose(0, 1), v.transpose(0, 1), enable_gqa=True)\n"
        "    return out[:, 0]",
        lost=[],
    ),
    Mistake(
        "waste-of-a-full-block",  # block_size - n % block_size: a whole block at exact multiples
        cell="t4-6-internal-waste",
        find="return blocks_needed(num_tokens, block_size) * block_size - num_tokens",
        replace="return block_size - num_tokens % block_size",
        lost=["t4-6-internal-waste-tests"],
        says="wrong result",
    ),
]
