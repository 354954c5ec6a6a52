"""Size of labkit's engine core: code lines per file and the longest functions.

    .venv/bin/python tests/count_core_lines.py

A code line is a line that holds a token other than a comment, after docstrings are removed (blank,
comment-only and docstring lines do not count). The core is what a student reads to follow one
request from prompt to text; weight loaders and GGUF parsing (labkit/loader.py) are not in it.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    "labkit/kv_cache.py",
    "labkit/attention/__init__.py",
    "labkit/attention/torch_ref.py",
    "labkit/model.py",
    "labkit/runner.py",
    "labkit/sampler.py",
    "labkit/scheduler.py",
    "labkit/engine.py",
    "labkit/outputs.py",
    "labkit/metrics.py",
    "labkit/llm.py",
]
MAX_CORE_LINES = 1600
MAX_FUNCTION_LINES = 40


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def code_lines(source: str) -> set[int]:
    """Line numbers (1-based) that hold code."""
    skip = _docstring_lines(ast.parse(source))
    lines: set[int] = set()
    ignored = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENDMARKER, tokenize.ENCODING)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in ignored:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in skip)
    return lines


def function_lengths(source: str) -> list[tuple[str, int]]:
    """(qualified name, code lines) of every function, nested functions counted in their parent too."""
    tree, code = ast.parse(source), code_lines(source)
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((name, len(code & set(range(child.lineno, child.end_lineno + 1)))))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


def measure(files: list[str] = CORE) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """({file: code lines}, [(file:function, code lines)] of every function in those files)."""
    per_file, functions = {}, []
    for rel in files:
        source = (ROOT / rel).read_text()
        per_file[rel] = len(code_lines(source))
        functions += [(f"{rel}:{name}", n) for name, n in function_lengths(source)]
    return per_file, functions


def main() -> None:
    per_file, functions = measure()
    for rel, n in per_file.items():
        print(f"{n:6d}  {rel}")
    print(f"{sum(per_file.values()):6d}  engine core in all (bar: {MAX_CORE_LINES})")
    longest = sorted(functions, key=lambda f: -f[1])[:5]
    print("longest functions:", ", ".join(f"{name} {n}" for name, n in longest),
          f"(bar: {MAX_FUNCTION_LINES})")


if __name__ == "__main__":
    main()
