"""The slow, obviously correct BPE trainer that labkit's fast one must agree with, merge for merge.

Every round recounts every pair of every word from scratch, picks the best pair by the documented
rule (most frequent; ties: smaller left-token bytes, then smaller right-token bytes, then smaller
ids), and applies that merge to every word before the next round. Words are the distinct
pre-tokens with their frequencies (the same cut as labkit's: special tokens removed, then
GPT2_SPLIT_PATTERN); nothing is cached or updated incrementally.

Used by tests/test_tokenizer.py and bench/tokenizer.py (the "naive" baseline).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import regex

from labkit.tokenizer import GPT2_SPLIT_PATTERN


def pretokenize(texts, special_tokens=()) -> Counter:
    """Counter of pre-tokens (UTF-8 bytes) over the texts, cut at the special tokens first."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    counts: Counter = Counter()
    for text in texts:
        pieces = [text]
        for special in sorted(special_tokens, key=len, reverse=True):
            pieces = [part for piece in pieces for part in piece.split(special)]
        for piece in pieces:
            for word in regex.findall(GPT2_SPLIT_PATTERN, piece):
                counts[word.encode("utf-8")] += 1
    return counts


def train_bpe_reference(texts, vocab_size: int, special_tokens=(), on_merge=None):
    """Same contract as labkit.tokenizer.train_bpe: (vocab id -> bytes, merges).

    on_merge(merges_so_far), if given, is called with the list of merges after each merge (the
    benchmark times several vocabulary sizes in one run, and may raise from it to stop a run that
    takes too long; the list it was given keeps the merges made until then).
    """
    vocab = {i: bytes([i]) for i in range(256)}
    words = {tuple(word): n for word, n in pretokenize(texts, special_tokens).items()}
    merges = []
    while 256 + len(merges) + len(special_tokens) < vocab_size:
        counts: Counter = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], vocab[p[0]], vocab[p[1]], p))
        new_id = 256 + len(merges)
        merges.append(best)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        new_words: Counter = Counter()
        for word, n in words.items():
            new_words[tuple(_merge_slowly(list(word), best, new_id))] += n
        words = new_words
        if on_merge is not None:
            on_merge(merges)
    for i, special in enumerate(special_tokens):
        vocab[256 + len(merges) + i] = special.encode("utf-8")
    return vocab, merges


def _merge_slowly(ids, pair, new_id):
    """Left-to-right, non-overlapping replacement, written independently of labkit.tokenizer.merge."""
    out = []
    while ids:
        if len(ids) >= 2 and (ids[0], ids[1]) == pair:
            out.append(new_id)
            ids = ids[2:]
        else:
            out.append(ids[0])
            ids = ids[1:]
    return out


def encode_reference(tokenizer, text: str) -> list[int]:
    """Plain BPE encoding with a tokenizer's vocab, ranked merges and split pattern (specials as text).

    For each pre-token: its bytes' ids, then repeatedly merge every occurrence of the adjacent pair
    with the lowest rank, until no adjacent pair has a merge.
    """
    by_bytes, rank, made = _tables(tokenizer)
    out = []
    for word in regex.findall(tokenizer.pattern, text):
        ids = [by_bytes[bytes([byte])] for byte in word.encode("utf-8") if bytes([byte]) in by_bytes]
        while True:
            candidates = [p for p in zip(ids, ids[1:]) if p in rank]
            if not candidates:
                break
            best = min(candidates, key=rank.__getitem__)
            ids = _merge_slowly(ids, best, made[best])
        out.extend(ids)
    return out


@lru_cache(maxsize=4)
def _tables(tokenizer):
    """(bytes -> id, pair -> rank, pair -> id it makes), from the tokenizer's public vocab and merges."""
    by_bytes = {}
    for i in sorted(tokenizer.vocab, reverse=True):
        if i not in tokenizer.special_tokens.values():
            by_bytes[tokenizer.vocab[i]] = i  # the smallest id wins when bytes repeat
    rank, made = {}, {}
    for r, (a, b) in enumerate(tokenizer.merges):
        joined = tokenizer.vocab[a] + tokenizer.vocab[b]
        rank[(a, b)] = r
        made[(a, b)] = 256 + r if tokenizer.vocab.get(256 + r) == joined else by_bytes[joined]
    return by_bytes, rank, made
