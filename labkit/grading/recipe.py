"""Objects a check builds that another process can build again: `@rebuildable`.

A check judged in the autograder's grading process passes the student's code objects that cannot
cross into the student's kernel as values (a model, an optimizer, a tokenizer, a loss function).
When such an object comes from a labkit function decorated with `@rebuildable`, the function's
result carries its recipe (the function's name, its arguments, which item of a returned tuple, and
which call), and the kernel rebuilds it by calling the same labkit function with the same
arguments: a seed makes the copy identical. Items of one call are rebuilt from one call on the
other side (an optimizer keeps the parameters of its model), and two calls give two objects.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

RECIPE_ATTR = "_labkit_recipe"
_calls = itertools.count(1)


def rebuildable(fn: Callable) -> Callable:
    """Tag what `fn` returns (each item of a returned tuple) with how to build it again."""
    label = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        call = next(_calls)
        items = out if isinstance(out, tuple) else (out,)
        for i, item in enumerate(items):
            try:
                setattr(item, RECIPE_ATTR, (label, args, kwargs, i if isinstance(out, tuple) else None, call))
            except (AttributeError, TypeError):  # an int, a str: sent as itself anyway
                pass
        return out

    wrapper.labkit_rebuildable = True
    return wrapper
