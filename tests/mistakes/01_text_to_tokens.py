"""Typical mistakes in solutions/lab0.1/01_text_to_tokens.ipynb (format: tests/mistakes/README.md).

Each costs exactly the test cells it names and no other: later tasks' tests run the student's
function with labkit's get_pair_counts / merge in place of the student's, and the pipeline test
builds a fresh tokenizer, so a broken upstream answer is not charged twice (labkit.exercises.ch1
substitutes labkit's references for the earlier tasks). Every mistake below is caught by the fixed
cases of its check (not only by the random ones).
"""

from notebook_tools import Mistake

MISTAKES = [
    Mistake(
        "merge-first-occurrence-only",  # the lab's "[aa]abdaaabac"
        cell="t3-merge",
        find="            out.append(new_id)\n            i += 2",
        replace="            return out + [new_id] + list(ids[i + 2:])",
        lost=["t3-merge-tests"],
        says="wrong result",
    ),
    Mistake(
        "train-never-applies-merges",  # the lab's build_bpe_vocab: every round recounts raw bytes
        cell="t4-train-bpe",
        find="        chunks = [merge(chunk, (a, b), new_id) for chunk in chunks]\n",
        replace="",
        lost=["t4-train-bpe-tests"],
        says="wrong result",
    ),
    Mistake(
        "train-ties-by-first-seen",  # max() over a dict: the first pair counted wins a tie
        cell="t4-train-bpe",
        find="a, b = min((p for p, c in counts.items() if c == top), "
        "key=lambda p: (vocab[p[0]], vocab[p[1]], p))",
        replace="a, b = max(counts, key=counts.get)",
        lost=["t4-train-bpe-tests"],
        says="wrong result",
    ),
    Mistake(
        "encode-replays-every-merge",  # a correct alternative: apply merges[0], merges[1], ... in order
        cell="t5-encode",
        find="""        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, len(merges)))
            if pair not in rank:
                break
            ids = merge(ids, pair, 256 + rank[pair])""",
        replace="""        for k, pair in enumerate(merges):
            ids = merge(ids, pair, 256 + k)""",
        lost=[],
    ),
    Mistake(
        "pair-counts-not-written",  # an unwritten Task 2 costs Task 2 only: train_bpe and encode use labkit's
        cell="t2-pair-counts",
        find="    counts = {} if counts is None else counts\n",
        replace='    raise NotImplementedError("Task 2: count adjacent pairs (t2-pair-counts): replace this line")\n',
        lost=["t2-pair-counts-tests"],
        says="not written yet: `get_pair_counts` raised NotImplementedError",
        alone=True,  # the point: no later task pays for it, so no later mistake may share its run
    ),
    Mistake(
        "units-float-division",  # the task's rule: integer arithmetic (a float has 53 bits)
        cell="t1-units-that-fit",
        find="return context_len * sample_units // sample_tokens",
        replace="return int(context_len * sample_units / sample_tokens)",
        lost=["t1-units-that-fit-tests"],
        says="wrong result",
    ),
    Mistake(
        "detokenizer-emits-half-a-character",  # decodes each token alone: U+FFFD mid-character
        cell="t8-detokenizer",
        find="        self.pending = data[cut:]\n        return data[:cut].decode(\"utf-8\", errors=\"replace\")",
        replace="        self.pending = b\"\"\n        return data.decode(\"utf-8\", errors=\"replace\")",
        lost=["t8-detokenizer-tests"],
        says="wrong result",
    ),
    Mistake(
        "gpt2-encode-ignores-byte-permutation",  # byte b taken as GPT-2 id b: wrong for every byte token
        cell="t9-gpt2-encode",
        find="    to_gpt2 = {i: encoder[s] for s, i in my_id.items()}  # my id -> GPT-2's id",
        replace="    to_gpt2 = {i: (i if i < 256 else encoder[s]) for s, i in my_id.items()}",
        lost=["t9-gpt2-encode-tests"],
        says="wrong result",
    ),
    Mistake(
        "pipeline-without-pad-token",  # GPT-2 has no pad token: padding raises ValueError
        cell="t6-pipeline",
        find="        if tokenizer.pad_token is None:\n            tokenizer.pad_token = tokenizer.eos_token\n",
        replace="",
        lost=["t6-pipeline-tests"],
        says="does not have a padding token",
    ),
    Mistake(
        "units-rounded-not-floored",  # 4096 / 1.3 = 3150.8 rounds to 3151 words, one more than fit
        cell="t1-units-that-fit",
        find="return context_len * sample_units // sample_tokens",
        replace="return round(context_len * sample_units / sample_tokens)",
        lost=["t1-units-that-fit-tests"],
        says="wrong result",
    ),
    Mistake(
        "merge-in-place",  # rewrites the caller's list
        cell="t3-merge",
        find="    out, i = [], 0",
        replace="    out, i = ids, 0\n    ids = list(ids)\n    out.clear()",
        lost=["t3-merge-tests"],
        says="changed its argument `ids` in place",
    ),
    Mistake(
        "encode-first-mergeable-pair",  # merges the leftmost pair that has a merge, not the lowest rank
        cell="t5-encode",
        find="pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, len(merges)))",
        replace="pair = next((p for p in zip(ids, ids[1:]) if p in rank), None)",
        lost=["t5-encode-tests"],
        says="wrong result",
    ),
    Mistake(
        "encode-calls-labkit",
        cell="t5-encode",
        find="    rank = {pair: k for k, pair in enumerate(merges)}",
        replace="""    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    return lt.Tokenizer(vocab, merges).encode(text)""",
        lost=["t5-encode-tests"],
        says="the reference this task is checked against",
    ),
    Mistake(
        "pipeline-scales-by-sqrt-d",  # the lab's "positional encoding scaling"
        cell="t6-pipeline",
        find="return self.embedding(input_ids), attention_mask",
        replace="return self.embedding(input_ids) * self.embedding.embedding_dim**0.5, attention_mask",
        lost=["t6-pipeline-tests"],
        says="wrong result",
    ),
    Mistake(
        "embedding-bytes-floor",  # int4 with an odd number of weights needs the last half byte too
        cell="t7-embedding-bytes",
        find="return -(-vocab_size * hidden_size * bits[dtype] // 8)",
        replace="return vocab_size * hidden_size * bits[dtype] // 8",
        lost=["t7-embedding-bytes-tests"],
        says="wrong result",
    ),
    Mistake(
        "detokenizer-holds-everything",  # waits for flush(): never streams
        cell="t8-detokenizer",
        find="        cut = len(data)\n",
        replace="        cut = 0\n",
        lost=["t8-detokenizer-tests"],
        also=[("t8-detokenizer", "            if byte & 0b1100_0000", "            if cut and byte & 0b1100_0000")],
        says="wrong result",
    ),
    Mistake(
        "gpt2-encode-forgets-special-token",  # <|endoftext|> encoded as ordinary text
        cell="t9-gpt2-encode",
        find="    for n, piece in enumerate(text.split(special)):",
        replace="    for n, piece in enumerate([text]):",
        lost=["t9-gpt2-encode-tests"],
        says="wrong result",
    ),
]
