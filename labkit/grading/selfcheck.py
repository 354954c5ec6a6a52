"""self_check(): run the visible test cells of this notebook again and print which pass.

In a student's kernel a failed check prints its message and lets Run All go on, so a failure is
easy to scroll past. One call at the end of a notebook (or anywhere) lists every graded test cell
with its points and PASS or FAIL and the first line of the failure. It runs the test cells that are
in the student's copy (the visible tests; the hidden ones exist only on the grading machine).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

from labkit.grading import checks


def _notebook_path(path: str | os.PathLike | None, namespace: dict) -> Path:
    # JupyterLab tells the kernel which notebook it serves: `__session__` (ipykernel >= 6.22) or the
    # JPY_SESSION_NAME environment variable.
    found = path or namespace.get("__session__") or os.environ.get("JPY_SESSION_NAME")
    if not found:
        raise ValueError("self_check: cannot tell which notebook this is; pass its path, e.g. "
                         "self_check('01_text_to_tokens.ipynb')")  # fmt: skip
    p = Path(found)
    if not p.exists():
        raise FileNotFoundError(f"self_check: no notebook at {p}; pass its path (save the notebook first)")
    return p


def graded_cells(nb: dict) -> list[tuple[str, float, str]]:
    """[(grade_id, points, source)] of the graded code cells of a notebook (as JSON)."""
    out = []
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution"):
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            out.append((meta.get("grade_id", "?"), float(meta.get("points", 0)), src))
    return out


def _run_cell(source: str, namespace: dict) -> str:
    """'' when the cell's checks pass, else the first line of the failure."""
    checks.RAISE_ALWAYS = True
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            exec(compile(source, "<test cell>", "exec"), namespace)
    except NotImplementedError as e:
        return f"not written yet ({e})" if str(e) else "not written yet"
    except checks.CheckFailed as e:
        lines = str(e).splitlines()
        return lines[0] if lines else "failed"
    except Exception as e:  # the cell itself broke (e.g. a name the student has not defined yet)
        return f"{type(e).__name__}: {e}"
    finally:
        checks.RAISE_ALWAYS = False
    return ""


def self_check(path: str | os.PathLike | None = None, namespace: dict[str, Any] | None = None) -> None:
    """Print PASS/FAIL and points for every visible graded test cell of the notebook."""
    if namespace is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            raise RuntimeError("self_check() runs in a Jupyter notebook; pass namespace= elsewhere")
        namespace = shell.user_ns
    nb_path = _notebook_path(path, namespace)
    cells = graded_cells(json.loads(nb_path.read_text(encoding="utf-8")))
    got = total = 0.0
    width = max([len(g) for g, _, _ in cells] + [8])
    print(f"Visible tests of {nb_path.name} (hidden tests run only when graded):")
    for grade_id, points, source in cells:
        problem = _run_cell(source, namespace)
        total += points
        got += 0 if problem else points
        mark = "FAIL" if problem else "PASS"
        line = f"  {mark}  {grade_id:<{width}}  {points:g} pt"
        print(line + (f"  {problem[:150]}" if problem else ""))
    print(f"{got:g} of {total:g} points pass the visible tests")
