"""The instructor's report of answers that look copied from the reference or that reach for it.

For every answer cell of every graded student, the functions and classes it defines are compared
with the labkit reference their test cell checks them against (`g.check_function(name, REF, ...)`,
`g.check_class(name, REF, ...)`): both sources are parsed, docstrings dropped and every identifier
renamed in order of appearance, and the two AST dumps compared (difflib ratio, 1.0 = the same code
up to names and comments); references under MIN_STATEMENTS statements are skipped (a four-line
function has few ways to be written). An answer also gets flags for what calls the reference by a side door
(`inspect.getsource`, `__code__`, `types.FunctionType`, `importlib`, frame inspection, IPython's input
transformers, the grader's helpers). Nothing is scored from this: it lists what a person should read.
Written to autograder/reports/similarity.csv by `make grade`.
"""

from __future__ import annotations

import ast
import csv
import difflib
import importlib
import inspect
import re
from pathlib import Path

from autograder.course import notebooks, read_notebook

REPORT = Path("autograder") / "reports" / "similarity.csv"
THRESHOLD = 0.9  # similarity at or above which an answer is flagged as a near copy
MIN_STATEMENTS = 8  # shorter references have few ways to be written: a match says nothing
SIDE_DOORS = {
    "getsource": "inspect.getsource",
    "__code__": "a code object",
    "FunctionType": "types.FunctionType",
    "importlib": "importlib",
    "currentframe": "frame inspection",
    "_getframe": "frame inspection",
    "f_back": "frame inspection",
    "f_locals": "frame inspection",
    "setprofile": "the grader's profiler",
    "settrace": "the grader's tracer",
    "get_referrers": "the garbage collector's object graph",
    "input_transformers": "IPython input transformers",
    "_labkit": "the grader's helpers",
    "LABKIT_GRADING": "the grader's settings",
}
_CHECK = re.compile(r"check_(?:function|class)\(\s*([A-Za-z_]\w*)\s*,\s*([A-Za-z_][\w.]*)")


class _Canon(ast.NodeTransformer):
    """Identifiers renamed v0, v1, ... in order of appearance; docstrings dropped."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def _n(self, name: str) -> str:
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_Name(self, node):
        return ast.copy_location(ast.Name(self._n(node.id), node.ctx), node)

    def visit_arg(self, node):
        node.arg, node.annotation = self._n(node.arg), None
        return node

    def visit_FunctionDef(self, node):
        node.name, node.returns = self._n(node.name), None
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
            node.body = body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        node.name = self._n(node.name)
        self.generic_visit(node)
        return node


def canonical(source: str) -> str:
    tree = _Canon().visit(ast.parse(source))
    return ast.dump(tree, annotate_fields=False)


def statements(source: str) -> int:
    return sum(isinstance(n, ast.stmt) for n in ast.walk(ast.parse(source)))


def similarity(a: str, b: str) -> float:
    """1.0 when two pieces of code are the same up to names, docstrings and comments."""
    ta, tb = re.findall(r"\w+|[^\w\s]", canonical(a)), re.findall(r"\w+|[^\w\s]", canonical(b))
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def _definitions(source: str) -> dict[str, str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    return {n.name: ast.get_source_segment(source, n) or "" for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))}  # fmt: skip


def _reference(path: str, modules: dict[str, str]):
    head, _, rest = path.partition(".")
    try:
        obj = importlib.import_module(modules.get(head, head))
        for attr in rest.split(".") if rest else []:
            obj = getattr(obj, attr)
        return obj
    except (ImportError, AttributeError):
        return None


def _module_aliases(nb) -> dict[str, str]:
    """{alias: module} from the import lines of the notebook's code cells (`from labkit import x as y`)."""
    out = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for m in re.finditer(r"^from ([\w.]+) import (\w+)(?: as (\w+))?", cell.source, re.M):
            out[m.group(3) or m.group(2)] = f"{m.group(1)}.{m.group(2)}"
        for m in re.finditer(r"^import ([\w.]+) as (\w+)", cell.source, re.M):
            out[m.group(2)] = m.group(1)
    return out


def rows_for(student: str, executed_dir: Path) -> list[dict]:
    rows = []
    for path in notebooks(executed_dir):
        nb = read_notebook(path)
        aliases = _module_aliases(nb)
        checked = {m.group(1): m.group(2) for c in nb.cells if c.cell_type == "code"
                   for m in _CHECK.finditer(c.source)}  # fmt: skip
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if not meta.get("solution") or cell.cell_type != "code":
                continue
            flags = sorted({why for word, why in SIDE_DOORS.items() if word in cell.source})
            definitions = _definitions(cell.source)
            if flags and not definitions:  # e.g. `merge = types.FunctionType(...)`: nothing to compare
                rows.append(dict(student=student, notebook=path.stem, answer=meta.get("grade_id", ""), name="",
                                 reference="", similarity="", flags="; ".join(flags)))  # fmt: skip
            for name, code in definitions.items():
                ref = _reference(checked[name], aliases) if name in checked else None
                try:
                    ref_source = inspect.getsource(ref) if ref is not None else ""
                    big = ref_source and statements(ref_source) >= MIN_STATEMENTS
                    score = similarity(code, ref_source) if big else None
                except (OSError, TypeError, SyntaxError):
                    score = None
                if flags or (score is not None and score >= THRESHOLD):
                    rows.append(dict(student=student, notebook=path.stem, answer=meta.get("grade_id", ""),
                                     name=name, reference=checked.get(name, ""),
                                     similarity="" if score is None else f"{score:.2f}",
                                     flags="; ".join(flags)))  # fmt: skip
    return rows


def write_report(root: Path, students: list[str], executed: callable) -> Path:
    """autograder/reports/similarity.csv for `students` (executed(student) -> their executed folder)."""
    path = Path(root) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["student", "notebook", "answer", "name", "reference", "similarity", "flags"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for student in students:
            writer.writerows(rows_for(student, executed(student)))
    return path
