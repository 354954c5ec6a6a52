"""The engine core stays readable in an afternoon: at most MAX_CORE_LINES code lines (blank, comment and
docstring lines not counted; loaders not in the core) and no function over MAX_FUNCTION_LINES."""

from count_core_lines import CORE, MAX_CORE_LINES, MAX_FUNCTION_LINES, code_lines, measure


def test_code_lines_skip_blanks_comments_and_docstrings():
    source = 'def f(x):\n    """Doc\n    string."""\n\n    # a comment\n    return (x +\n            1)  # trailing\n'
    assert sorted(code_lines(source)) == [1, 6, 7]


def test_engine_core_size():
    per_file, functions = measure()
    assert set(per_file) == set(CORE)
    assert sum(per_file.values()) <= MAX_CORE_LINES, per_file
    too_long = [(name, n) for name, n in functions if n > MAX_FUNCTION_LINES]
    assert not too_long, too_long
