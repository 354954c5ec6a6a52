"""Byte-level BPE: training, encoding and decoding, with GPT-2's files and a GGUF vocabulary.

What is here, in reading order:

- `bytes_to_unicode()`: the printable stand-in character GPT-2's files use for each byte.
- `get_pair_counts`, `merge`: the two primitives of BPE on a list of ids.
- `train_bpe`: learn merges from text. Byte-level (ids 0..255 are the bytes), text first cut into
  pre-tokens by a regex (GPT-2's), merges learned over word frequencies with pair counts updated
  incrementally, each merge applied before the next count.
- `Tokenizer`: encode / decode with a learned or loaded vocabulary; special tokens; a word cache;
  `Tokenizer.gpt2()` (GPT-2's own files), `Tokenizer.from_gguf(path)` (the vocabulary stored in a
  GGUF model file, e.g. SmolLM2's), `save` / `load`.
- `IncrementalDetokenizer`: ids in one at a time, only completed text out (for streaming).

Rules worth knowing:

- Ties. When several pairs are equally frequent, training merges the pair whose left token's bytes
  sort first, then whose right token's bytes sort first (Python's `bytes` order), then the smaller
  ids. So among the raw bytes, b"a" + b"b" beats b"a" + b"c", which beats b"b" + b"a".
- Pair counts overlap, merges do not: in "aaab", `get_pair_counts` counts ("a", "a") twice, and
  `merge` replaces only the first "aa", left to right, giving ["aa", "a", "b"].
- Encoding merges within each pre-token by rank (the order merges were learned): repeatedly merge
  every occurrence of the adjacent pair with the lowest rank. This is what GPT-2, HF tokenizers and
  tiktoken do, and gives the same ids.
- Special tokens (`<|endoftext|>`, `<|im_start|>`, ...) are matched in the text only when
  `encode(text, allowed_special=...)` allows it: "all" (every special of the vocabulary), a set of
  names (those), "none" (none: their text is encoded as ordinary text), or the default
  "none_raise" (none, and a text that contains one raises ValueError, so a special cannot slip in
  from user input unnoticed). Training cuts the texts at the given special tokens and never learns
  merges across or inside them.
- `decode` never raises on a partial UTF-8 character: bytes that are not valid UTF-8 become U+FFFD
  (errors="replace"). An id outside the vocabulary raises ValueError, or is dropped with
  unknown="skip". `decode(encode(s)) == s` for every str s when every byte has a token (GPT-2 and
  anything `train_bpe` makes do; SmolLM2's GGUF vocabulary lacks 21 byte values, see `from_gguf`).

What is not here: Unicode normalization or lowercasing (byte-level BPE needs none), WordPiece /
Unigram / SentencePiece models (see `labkit.tokenizer_zoo` for real ones), BPE dropout, and
multi-threaded encoding (`encode_batch` runs in one thread and shares the word cache).
"""

from __future__ import annotations

import codecs
import heapq
import json
import operator
import struct
from collections import Counter
from collections.abc import Iterable
from functools import cache
from itertools import chain
from pathlib import Path

import regex

# GPT-2's pre-tokenizer: contractions, letters with one optional leading space, digits likewise,
# other symbols likewise, whitespace not followed by a non-space, and any other whitespace.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SmolLM2 (GGUF tokenizer.ggml.pre = "smollm", like StarCoder's): every digit is cut out on its own
# first (llama.cpp applies "\p{N}" and then the GPT-2 regex; HF applies Digits(individual_digits=True)
# and then ByteLevel), and the GPT-2 regex runs on the stretches between digits. One regex does
# both: a digit is its own piece, no other piece contains a digit, and a whitespace run that stops
# right before a digit counts as ending its stretch (the "(?=...\p{N}...)" in place of "(?!\S)").
SMOLLM_SPLIT_PATTERN = (
    r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\s|\p{N}|\Z)|\s+"""
)

# tokenizer.ggml.pre value -> split pattern (llama.cpp groups smollm with starcoder).
GGUF_PRE_PATTERNS = {
    "gpt2": GPT2_SPLIT_PATTERN,
    "smollm": SMOLLM_SPLIT_PATTERN,
    "starcoder": SMOLLM_SPLIT_PATTERN,
}

_FORMAT = "labkit.tokenizer"  # save/load file tag


# ----------------------------------------------------------------------------------------------
# Bytes and the two BPE primitives
# ----------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """The character GPT-2's vocab.json / merges.txt (and GGUF vocabularies) write for each byte.

    Printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (space,
    control bytes, ...) get chr(256), chr(257), ... in byte order, so a space is written 'Ġ' and a
    newline 'Ċ'. The dict lists the printable bytes first, which is the order of ids 0..255 in
    GPT-2's vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + len(mapping) - len(printable))
    assert len(set(mapping.values())) == 256
    return mapping


def get_pair_counts(ids: list[int], counts: dict | None = None) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in ids, overlapping: [1, 1, 1] has (1, 1) twice.

    Adds to `counts` when given (so one dict can sum over many chunks) and returns it.
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair` in ids by new_id, scanning left to right without overlap.

    merge([a, a, a, b], (a, a), Z) == [Z, a, b]: the second "aa" overlaps the first and stays.
    """
    first, second = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == first and i + 1 < n and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _check_special_tokens(special_tokens) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a list of strings, got the string {special_tokens!r}; "
                        f"write special_tokens=[{special_tokens!r}]")
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise TypeError(f"each special token must be a non-empty str, got {s!r}")
        _utf8(s)
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens has duplicates: {specials}")
    return specials


def _check_texts(texts: str | Iterable[str]) -> Iterable[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be str or an iterable of str, got bytes; decode it first, "
                        "e.g. data.decode('utf-8')")
    if not isinstance(texts, Iterable):
        raise TypeError(f"texts must be str or an iterable of str, got {type(texts).__name__}")
    return texts


def count_pretokens(texts: str | Iterable[str], special_tokens=(), pattern: str = GPT2_SPLIT_PATTERN
                    ) -> dict[bytes, int]:
    """Word frequencies: how often each pre-token (as UTF-8 bytes) occurs in the texts.

    Each text is first cut at the special tokens (which are dropped), then split by `pattern`.
    """
    specials = _check_special_tokens(special_tokens)
    splitter = _special_splitter(tuple(specials)) if specials else None
    pat = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for i, text in enumerate(_check_texts(texts)):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str; pass strings "
                            f"(decode bytes first)")
        for part in (splitter.split(text)[::2] if splitter else (text,)):
            counts.update(pat.findall(part))
    return {_utf8(word): n for word, n in counts.items()}


def _utf8(text: str) -> bytes:
    """text as UTF-8; a lone surrogate (which has no UTF-8 form) raises a ValueError that says so."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise ValueError(f"the text has a lone surrogate {bad!r} (U+{ord(bad):04X}), which has no UTF-8 "
                         f"form; clean it first, e.g. text.encode('utf-8', 'replace').decode()") from None


def train_bpe(texts: str | Iterable[str], vocab_size: int, special_tokens=()
              ) -> tuple[dict[int, bytes], list[tuple[int, int]]]:
    """Learn a byte-level BPE vocabulary of `vocab_size` ids from texts.

    Returns (vocab, merges): vocab maps every id to its bytes; merges[i] is the pair of ids that
    makes id 256 + i; the special tokens get the ids after the last merge, in the order given.
    Ties between equally frequent pairs follow the rule in the module docstring. Training stops
    early, with fewer merges, when no adjacent pair is left (a tiny corpus).

    How it stays fast: the text becomes word frequencies (each distinct pre-token once, with its
    count), pair counts are summed over those words once, and after each merge only the words that
    contain the merged pair are re-merged; the counts of the pairs that overlap the merged ones are
    adjusted and pushed on a max-heap (stale heap entries are skipped when popped).
    """
    specials = _check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__} {vocab_size!r}")
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size={vocab_size} is below 256 byte tokens + {len(specials)} special "
                         f"token(s) = {256 + len(specials)}; choose vocab_size >= {256 + len(specials)}")
    word_counts = count_pretokens(texts, specials)
    vocab = {i: bytes([i]) for i in range(256)}
    words = [list(w) for w in word_counts]  # each a list of ids, bytes at first
    freqs = list(word_counts.values())
    merges = _learn_merges(words, freqs, vocab, vocab_size - 256 - len(specials))
    for i, s in enumerate(specials):
        vocab[256 + len(merges) + i] = s.encode("utf-8")
    return vocab, merges


def _learn_merges(words: list[list[int]], freqs: list[int], vocab: dict[int, bytes], num_merges: int
                  ) -> list[tuple[int, int]]:
    """The merge loop of `train_bpe`; edits words and vocab in place."""
    counts: dict[tuple[int, int], int] = {}  # pair -> occurrences, weighted by word frequency
    where: dict[tuple[int, int], set[int]] = {}  # pair -> indices of words that (may) contain it
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(wi)
    # Max-heap by count, then the tie rule; Python's heap is a min-heap, hence -count.
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges:
        best = _pop_best(heap, counts)
        if best is None:
            break  # no adjacent pair left anywhere
        new_id = 256 + len(merges)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merges.append(best)
        touched: set[tuple[int, int]] = set()
        for wi in where.pop(best):
            old = words[wi]
            new = merge(old, best, new_id)
            if len(new) == len(old):
                continue  # this word lost the pair in an earlier merge; its index entry was stale
            words[wi] = new
            for pair, d in _pair_delta(old, new).items():
                counts[pair] = counts.get(pair, 0) + d * freqs[wi]
                touched.add(pair)
                if d > 0:
                    where.setdefault(pair, set()).add(wi)
        for pair in touched:
            if counts[pair]:
                heapq.heappush(heap, (-counts[pair], vocab[pair[0]], vocab[pair[1]], *pair))
            else:
                del counts[pair]
        assert best not in counts, "a merge must remove every occurrence of its pair"
    return merges


def _pop_best(heap: list, counts: dict[tuple[int, int], int]) -> tuple[int, int] | None:
    """Pop heap entries until one matches the pair's current count; that pair is the best one."""
    while heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        if counts.get((a, b)) == -neg_count:
            return (a, b)
    return None


def _pair_delta(old: list[int], new: list[int]) -> dict[tuple[int, int], int]:
    """Change in each pair's count when a word goes from old to new (non-zero changes only).

    Only pairs that overlap a merged position change: the merged pair itself, and the pairs
    between a merged token and its neighbours.
    """
    delta: dict[tuple[int, int], int] = {}
    for pair in zip(old, old[1:]):
        delta[pair] = delta.get(pair, 0) - 1
    for pair in zip(new, new[1:]):
        delta[pair] = delta.get(pair, 0) + 1
    return {pair: d for pair, d in delta.items() if d}


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


@cache
def _special_splitter(specials: tuple[str, ...]) -> regex.Pattern:
    """A regex whose split() alternates text and special tokens; longer specials win."""
    alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    return regex.compile(f"({alternatives})")


class _WordCache(dict):
    """pre-token (str) -> its ids (tuple). A miss runs BPE and stores the result; cleared when full."""

    def __init__(self, bpe, max_size: int):
        super().__init__()
        self._bpe, self._max_size = bpe, max_size

    def __missing__(self, word: str) -> tuple[int, ...]:
        ids = self._bpe(word)
        if len(word) <= 256:  # do not keep pathological pre-tokens (a megabyte of spaces)
            if len(self) >= self._max_size:
                self.clear()
            self[word] = ids
        return ids


class Tokenizer:
    """A byte-level BPE tokenizer: a vocabulary (id -> bytes), ranked merges, special tokens.

    merges is either a list of id pairs in rank order, where merge i makes the token whose bytes
    are vocab[a] + vocab[b] (id 256 + i for what `train_bpe` returns and for GPT-2), or a dict
    {(a, b): new_id} in rank order (a GGUF vocabulary, whose ids do not follow the merges).
    special_tokens maps each special token's text to its id (ids must be in vocab).
    on_missing_byte says what encode does with a byte that has no token: "raise" (ValueError) or
    "drop" (leave it out, as HF tokenizers do). bos/eos/pad ids are recorded for the engine (encode
    never adds them). A word cache maps each pre-token seen to its ids (up to cache_size entries,
    then it starts over), so common words cost one dict lookup. Treat vocab and merges as read-only.
    """

    def __init__(self, vocab: dict[int, bytes], merges, special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_SPLIT_PATTERN, *, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 on_missing_byte: str = "raise", cache_size: int = 1 << 17):
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regex string, got {type(pattern).__name__}")
        if on_missing_byte not in ("raise", "drop"):
            raise ValueError(f"on_missing_byte must be 'raise' or 'drop', got {on_missing_byte!r}")
        self.vocab = {int(i): bytes(b) for i, b in vocab.items()}
        self.special_tokens = dict(special_tokens or {})
        for name, i in self.special_tokens.items():
            if self.vocab.get(i) != name.encode("utf-8"):
                raise ValueError(f"special token {name!r} has id {i}, whose vocab entry is "
                                 f"{self.vocab.get(i)!r}; vocab[{i}] must be {name.encode('utf-8')!r}")
        self.pattern = pattern
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
        self.on_missing_byte = on_missing_byte
        self._pat = regex.compile(pattern)
        special_ids = set(self.special_tokens.values())
        self._token_ids = {}  # bytes -> id; ordinary tokens first so a special never shadows one
        for i in sorted(self.vocab, key=lambda i: (i in special_ids, i)):
            self._token_ids.setdefault(self.vocab[i], i)
        self._byte_ids = [self._token_ids.get(bytes([b])) for b in range(256)]  # None: no token
        self._merge_of = self._rank_merges(merges)  # (a, b) -> (rank, new_id)
        self.merges = list(self._merge_of)
        self._decode_table = self.vocab
        self._decode_no_special = {i: (b"" if i in special_ids else b) for i, b in self.vocab.items()}
        self._cache = _WordCache(self._bpe, cache_size)

    def _rank_merges(self, merges) -> dict[tuple[int, int], tuple[int, int]]:
        ranked = {}
        items = merges.items() if isinstance(merges, dict) else ((tuple(p), None) for p in merges)
        for rank, ((a, b), new_id) in enumerate(items):
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge {rank} ({a}, {b}) uses an id that is not in the vocabulary")
            if (a, b) in ranked:
                raise ValueError(f"merge {rank} ({a}, {b}) repeats merge {ranked[(a, b)][0]}; "
                                 f"list each pair once")
            joined = self.vocab[a] + self.vocab[b]
            if new_id is None:  # list form: 256 + rank when that is the token, else look it up
                new_id = 256 + rank if self.vocab.get(256 + rank) == joined else self._token_ids.get(joined)
            if new_id is None or self.vocab.get(new_id) != joined:
                raise ValueError(f"merge {rank} ({a}, {b}) makes {joined!r}, which is not the vocab "
                                 f"entry of id {new_id}")
            ranked[(a, b)] = (rank, new_id)
        return ranked

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, special_tokens=()) -> Tokenizer:
        """Train with `train_bpe` and wrap the result (special ids follow the merges)."""
        specials = _check_special_tokens(special_tokens)
        vocab, merges = train_bpe(texts, vocab_size, specials)
        first = 256 + len(merges)
        return cls(vocab, merges, {s: first + i for i, s in enumerate(specials)})

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's tokenizer from its vocab.json and merges.txt (labkit assets). Built once, cached."""
        return _gpt2_tokenizer()

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """The tokenizer stored in a GGUF model file (tokenizer.ggml.* metadata), e.g. SmolLM2's.

        Supports tokenizer.ggml.model "gpt2" (byte-level BPE) with tokenizer.ggml.pre in
        GGUF_PRE_PATTERNS (metadata read by `read_gguf_metadata`). Tokens typed CONTROL (3) or
        USER_DEFINED (4) become special tokens; bos/eos/padding ids come from the metadata.
        SmolLM2's vocabulary has no token for 21 byte values (0x04, 0x06, 0x13, 0x14, 0x16, 0x1d,
        and 0xc0, 0xc1, 0xf1, 0xf2, 0xf5..0xff, which never or almost never occur in UTF-8 text):
        encode drops those bytes, as HF's tokenizer does.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}; for SmolLM2 use "
                                    f"labkit.assets.path('smollm2-135m-instruct-q4_1')")
        meta = read_gguf_metadata(path).get
        model, pre = meta("tokenizer.ggml.model"), meta("tokenizer.ggml.pre", "gpt2")
        if model != "gpt2":
            raise NotImplementedError(f"{path.name}: tokenizer.ggml.model is {model!r}; only byte-level "
                                      f"BPE ('gpt2') is supported")
        if pre not in GGUF_PRE_PATTERNS:
            raise NotImplementedError(f"{path.name}: tokenizer.ggml.pre is {pre!r}; supported: "
                                      f"{sorted(GGUF_PRE_PATTERNS)}")
        tokens, types = meta("tokenizer.ggml.tokens"), meta("tokenizer.ggml.token_type")
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        vocab, specials = {}, {}
        for i, (tok, kind) in enumerate(zip(tokens, types)):
            if kind in (3, 4):  # CONTROL, USER_DEFINED: written as plain text, matched whole
                vocab[i], specials[tok] = tok.encode("utf-8"), i
            elif all(c in byte_of for c in tok):
                vocab[i] = bytes(byte_of[c] for c in tok)
            else:  # not in the byte alphabet: take the text as it is
                vocab[i] = tok.encode("utf-8")
        ids = {tok: i for i, tok in enumerate(tokens)}
        merges = {}
        for line in meta("tokenizer.ggml.merges"):
            a, b = line.split(" ")
            merges[(ids[a], ids[b])] = ids[a + b]
        return cls(vocab, merges, specials, GGUF_PRE_PATTERNS[pre], on_missing_byte="drop",
                   bos_token_id=meta("tokenizer.ggml.bos_token_id"),
                   eos_token_id=meta("tokenizer.ggml.eos_token_id"),
                   pad_token_id=meta("tokenizer.ggml.padding_token_id"))

    # -- encoding ------------------------------------------------------------------------------

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token: its bytes, then merges by rank until no adjacent pair has one.

        The rule: merge every occurrence of the adjacent pair with the lowest rank, left to right,
        and repeat. Done here in O(n log n) with a heap of (rank, position) over a linked list of
        tokens: popping the lowest rank, leftmost first, and merging it gives the same result,
        because a pair that a merge creates always has a higher rank than the merge that made its
        new token, so it waits until the current rank is done. Heap entries left stale by a merge
        (their position was absorbed, or now starts another pair) are skipped when popped. (HF
        tokenizers merges a word the same way.)
        """
        ids = [self._byte_ids[b] for b in _utf8(word)]
        if None in ids:
            ids = self._missing_bytes(word, ids)
        merge_of, n = self._merge_of, len(ids)
        heap = [(merge_of[p][0], i) for i, p in enumerate(zip(ids, ids[1:])) if p in merge_of]
        if not heap:
            return tuple(ids)
        heapq.heapify(heap)
        tokens: list[int | None] = ids  # None: absorbed into the token on its left
        nxt = list(range(1, n + 1))  # position of the next live token (n: none)
        prv = list(range(-1, n - 1))  # position of the previous live token (-1: none)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if tokens[i] is None or j >= n:
                continue
            found = merge_of.get((tokens[i], tokens[j]))
            if found is None or found[0] != rank:
                continue
            tokens[i], tokens[j] = found[1], None
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            for left in (prv[i], i):  # the two pairs that now contain the new token
                if left >= 0 and nxt[left] < n:
                    pair = (tokens[left], tokens[nxt[left]])
                    if pair in merge_of:
                        heapq.heappush(heap, (merge_of[pair][0], left))
        return tuple(t for t in tokens if t is not None)

    def _missing_bytes(self, word: str, ids: list[int | None]) -> list[int]:
        if self.on_missing_byte == "drop":
            return [i for i in ids if i is not None]
        bad = sorted({b for b, i in zip(word.encode("utf-8"), ids) if i is None})
        raise ValueError(f"the vocabulary has no token for byte(s) {[hex(b) for b in bad]} of {word!r}; "
                         f"remove those characters or build the Tokenizer with on_missing_byte='drop'")

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling (their text is ordinary text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}; decode bytes first "
                            f"(data.decode('utf-8')), and use encode_batch for a list of strings")
        return list(chain.from_iterable(map(self._cache.__getitem__, self._pat.findall(text))))

    def encode(self, text: str, allowed_special="none_raise") -> list[int]:
        """Token ids of text. allowed_special: "none_raise" (default), "none", "all" or a set of
        special-token strings; see the module docstring."""
        if not isinstance(text, str):
            self.encode_ordinary(text)  # raises the TypeError
        special = self._allowed_specials(allowed_special, text)
        if not special:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, part in enumerate(_special_splitter(tuple(special)).split(text)):
            if i % 2:
                ids.append(special[part])
            elif part:
                ids.extend(self.encode_ordinary(part))
        return ids

    def encode_batch(self, texts: Iterable[str], allowed_special="none_raise") -> list[list[int]]:
        """encode() of each text, in order (one thread; the word cache is shared)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings; for one string use encode(text)")
        return [self.encode(t, allowed_special) for t in texts]

    def _allowed_specials(self, allowed_special, text: str) -> dict[str, int]:
        if allowed_special == "all":
            return self.special_tokens
        if allowed_special == "none":
            return {}
        if allowed_special == "none_raise":
            for name, i in self.special_tokens.items():
                if name in text:
                    raise ValueError(f"text contains the special token {name!r}; pass allowed_special='all' "
                                     f"to encode it as id {i}, or allowed_special='none' to encode it as "
                                     f"ordinary text")
            return {}
        if isinstance(allowed_special, (set, frozenset, list, tuple)):
            unknown = [s for s in allowed_special if s not in self.special_tokens]
            if unknown:
                raise ValueError(f"allowed_special names {unknown}, which are not special tokens of this "
                                 f"tokenizer; known: {sorted(self.special_tokens)}")
            return {s: self.special_tokens[s] for s in allowed_special}
        raise ValueError(f"allowed_special must be 'none_raise', 'none', 'all' or a set of special tokens, "
                         f"got {allowed_special!r}")

    # -- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], unknown: str = "raise", skip_special: bool = False) -> bytes:
        """The bytes the ids stand for, concatenated. unknown="raise" | "skip" for ids not in vocab."""
        if unknown not in ("raise", "skip"):
            raise ValueError(f"unknown must be 'raise' or 'skip', got {unknown!r}")
        table = self._decode_no_special if skip_special else self._decode_table
        try:
            return b"".join(map(table.__getitem__, ids))
        except (KeyError, TypeError):
            pass  # redo slowly to name the bad id, or to skip it
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids must be a list of ints, got {type(ids).__name__}")
        parts = []
        for i in ids:
            try:
                key = operator.index(i)
            except TypeError:
                raise TypeError(f"token ids must be integers, got {type(i).__name__} {i!r}") from None
            if key in table:
                parts.append(table[key])
            elif unknown == "raise":
                raise ValueError(f"unknown token id {key}: this vocabulary has {self.vocab_size} ids "
                                 f"(0..{max(self.vocab)}); pass unknown='skip' to drop ids it does not have")
        return b"".join(parts)

    def decode(self, ids: Iterable[int], errors: str = "replace", unknown: str = "raise",
               skip_special: bool = False) -> str:
        """Text of the ids. Bytes that are not valid UTF-8 (a character cut between tokens) become
        U+FFFD with errors="replace"; errors="strict" raises instead."""
        return self.decode_bytes(ids, unknown, skip_special).decode("utf-8", errors=errors)

    # -- lookups -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self.vocab)

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one id (raises KeyError naming it when it is not in the vocabulary)."""
        if token_id not in self.vocab:
            raise KeyError(f"unknown token id {token_id}; ids run from 0 to {max(self.vocab)}")
        return self.vocab[token_id]

    def token_to_id(self, token: bytes | str) -> int:
        """The id of a token given as bytes, or as text (a special token, or UTF-8 of ordinary bytes)."""
        if isinstance(token, str):
            if token in self.special_tokens:
                return self.special_tokens[token]
            token = token.encode("utf-8")
        if token not in self._token_ids:
            raise KeyError(f"{token!r} is not a token of this vocabulary")
        return self._token_ids[token]

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")

    # -- save / load ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (token bytes in hex); `Tokenizer.load` reads it back."""
        state = {
            "format": _FORMAT, "version": 1, "pattern": self.pattern,
            "vocab": {str(i): b.hex() for i, b in sorted(self.vocab.items())},
            "merges": [[a, b, new_id] for (a, b), (_, new_id) in self._merge_of.items()],
            "special_tokens": self.special_tokens, "on_missing_byte": self.on_missing_byte,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        Path(path).write_text(json.dumps(state), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format") != _FORMAT or state.get("version") != 1:
            raise ValueError(f"{path} is not a labkit tokenizer file (format {_FORMAT!r}, version 1); "
                             f"write one with Tokenizer.save")
        vocab = {int(i): bytes.fromhex(h) for i, h in state["vocab"].items()}
        merges = {(a, b): new_id for a, b, new_id in state["merges"]}
        return cls(vocab, merges, state["special_tokens"], state["pattern"],
                   bos_token_id=state["bos_token_id"], eos_token_id=state["eos_token_id"],
                   pad_token_id=state["pad_token_id"], on_missing_byte=state["on_missing_byte"])


@cache
def _gpt2_tokenizer() -> Tokenizer:
    from labkit import assets

    encoder = json.loads(assets.path("gpt2-encoder").read_text(encoding="utf-8"))  # token text -> id
    lines = assets.path("gpt2-merges").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version"), f"unexpected first line of merges.txt: {lines[0]!r}"
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    eot = "<|endoftext|>"
    vocab = {i: (tok.encode("utf-8") if tok == eot else bytes(byte_of[c] for c in tok))
             for tok, i in encoder.items()}
    merges = [(encoder[a], encoder[b]) for a, b in (line.split(" ") for line in lines[1:] if line)]
    eot_id = encoder[eot]
    return Tokenizer(vocab, merges, {eot: eot_id}, GPT2_SPLIT_PATTERN,
                     bos_token_id=eot_id, eos_token_id=eot_id)


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_metadata(path: str | Path) -> dict:
    """The key-value metadata at the head of a GGUF file (versions 2 and 3), tensors left unread.

    Layout (little-endian): b"GGUF", version u32, tensor count u64, key-value count u64, then each
    key as a string (u64 length + UTF-8), a value type u32 and the value: a scalar (types in
    _GGUF_SCALARS), a string (8), or an array (9: item type u32, count u64, items). This reads the
    tokenizer of a 100 MB model in a fraction of a second; gguf.GGUFReader parses every tensor too.
    """
    with open(path, "rb") as f:
        def unpack(fmt: str):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def string() -> str:
            return f.read(unpack("Q")[0]).decode("utf-8")

        def value(kind: int):
            if kind == 8:
                return string()
            if kind == 9:
                item_kind, count = unpack("IQ")
                if item_kind in _GGUF_SCALARS:
                    return list(unpack(f"{count}{_GGUF_SCALARS[item_kind]}"))
                return [value(item_kind) for _ in range(count)]
            if kind not in _GGUF_SCALARS:
                raise ValueError(f"{path}: unknown GGUF value type {kind}; the file is corrupt or "
                                 f"newer than GGUF v3")
            return unpack(_GGUF_SCALARS[kind])[0]

        magic, version = f.read(4), unpack("I")[0]
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{path} is not a GGUF v2/v3 file (magic {magic!r}, version {version})")
        _, n_kv = unpack("QQ")  # tensor count, key-value count
        metadata = {}
        for _ in range(n_kv):
            key = string()
            metadata[key] = value(unpack("I")[0])
    return metadata


# ----------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------


class IncrementalDetokenizer:
    """Turn a stream of ids into text as it completes, never emitting part of a UTF-8 character.

        detok = IncrementalDetokenizer(tokenizer)
        for token_id in stream:
            print(detok.feed(token_id), end="")
        print(detok.flush())

    The pieces joined equal tokenizer.decode(all_ids, errors): bytes of a character split across
    tokens wait until the character is complete; bytes that can never form one become U+FFFD as
    soon as that is certain (or at flush).
    """

    def __init__(self, tokenizer: Tokenizer, errors: str = "replace", unknown: str = "raise",
                 skip_special: bool = False):
        self.tokenizer, self.unknown, self.skip_special = tokenizer, unknown, skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)

    def feed(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character is still partial)."""
        data = self.tokenizer.decode_bytes([token_id], self.unknown, self.skip_special)
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """End of stream: whatever bytes are still pending, as text (U+FFFD for an unfinished char)."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out
