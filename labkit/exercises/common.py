"""What the chapters' checks share: the random model shape, integer results, and substitution.

`substituted(fn, **references)` runs a check with labkit's references in place of the student's
earlier answers, in the namespace the student's function reads its globals from (the notebook), so a
later task is graded on its own work: one unwritten or wrong task costs only its own points.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from labkit import grading as g
from labkit import memory


def random_shape(rng: random.Random, max_layers: int = 128, max_kv_heads: int = 16) -> memory.ModelShape:
    """A random Llama-family ModelShape (GQA groups, any head_dim up to 256), for the checks."""
    kv_heads, group, head_dim = rng.randint(1, max_kv_heads), rng.randint(1, 8), 2 * rng.randint(8, 128)
    return memory.ModelShape(
        "random", num_hidden_layers=rng.randint(1, max_layers), hidden_size=kv_heads * group * head_dim,
        num_attention_heads=kv_heads * group, num_key_value_heads=kv_heads,
        intermediate_size=rng.randint(64, 53248), vocab_size=rng.randint(1000, 256000),
        tie_word_embeddings=rng.random() < 0.5, head_dim=head_dim,
    )


def int_result(expected: Any, received: Any) -> str | None:
    """Compare for check_function: equal, with an int wherever the reference gives an int (not 3.0,
    not True), inside dicts and lists too."""
    if isinstance(expected, dict) and isinstance(received, dict) and expected.keys() == received.keys():
        return next((f"[{k!r}]: {d}" for k in expected if (d := int_result(expected[k], received[k]))), None)
    if isinstance(expected, (list, tuple)) and isinstance(received, (list, tuple)) and len(expected) == len(received):
        return next((f"[{i}]: {d}" for i, (e, r) in enumerate(zip(expected, received)) if (d := int_result(e, r))),
                    None)
    if isinstance(expected, int) and not isinstance(expected, bool):
        if isinstance(received, bool) or not isinstance(received, int):
            return f"expected an int, received a {type(received).__name__} ({received!r})"
    return g.same(expected, received)


@contextmanager
def substituted(fn: Any, **references: Callable) -> Iterator[None]:
    """Inside the block, the names in `references` resolve to labkit's versions for `fn`'s code."""
    namespace = getattr(fn, "__globals__", None)
    if namespace is None:  # a class: its methods read the same module globals
        namespace = next((m.__globals__ for m in vars(fn).values() if hasattr(m, "__globals__")), {})
    with mock.patch.dict(namespace, references):
        yield


def compare_predictions(predicted: dict[str, Any], measured: dict[str, Any]) -> str:
    """A Markdown table: each quantity, the student's prediction, the measurement, and their ratio.

    predicted: {quantity: number or None (not predicted yet)}; measured: {quantity: number}.
    Display it with IPython.display.Markdown."""
    lines = ["| quantity | your prediction | measured | measured / predicted |", "| --- | ---: | ---: | ---: |"]
    for name, value in measured.items():
        guess = predicted.get(name)
        if isinstance(guess, (int, float)) and not isinstance(guess, bool) and guess:
            shown, ratio = f"{guess:,}", f"{value / guess:,.2f}x"
        else:
            shown, ratio = "(not recorded)", ""
        lines.append(f"| {name} | {shown} | {value:,} | {ratio} |")
    return "\n".join(lines)
