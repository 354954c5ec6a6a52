"""Build nbgrader-marked notebook cells from Python, for chapter writers who script their notebooks.

The cell kinds of the workbook (see autograder/README.md, "Authoring a graded task"):

    markdown(text)                          prose; students may edit it, nobody grades it
    code(source)                            ungraded code the student runs (demos, plots)
    readonly(source, grade_id)              locked code: set-up and imports; autograde restores it
    solution(source, grade_id)              the student's answer; `### BEGIN SOLUTION` ...
                                            `### END SOLUTION` marks what the release replaces
    tests(source, grade_id, points)         a graded, locked test cell; `### BEGIN HIDDEN TESTS` ...
                                            `### END HIDDEN TESTS` marks checks the release hides

    nb = notebook([markdown("# Chapter"), readonly("import labkit", "setup"), ...])
    write(nb, "solutions/lab0.1/01_text_to_tokens.ipynb")

Cell ids are the grade_id for nbgrader cells and `<kind>-<n>` otherwise, so that a rebuilt notebook
has the same ids. This module writes notebooks; it does not check that each task has its tests
(tests/test_notebooks.py does).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode

GRADE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _check_id(grade_id: str) -> str:
    if not GRADE_ID.match(grade_id):
        raise ValueError(
            f"grade_id {grade_id!r} must be 1-63 characters of a-z, 0-9, '-' and '_' "
            "(starting with a letter or digit), e.g. 't2-merge' or 't2-merge-tests'"
        )
    return grade_id


def _nbgrader(grade_id: str, *, grade: bool, solution: bool, locked: bool, points: float = 0) -> dict:
    meta = {
        "grade": grade,
        "grade_id": _check_id(grade_id),
        "locked": locked,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if grade:
        meta["points"] = points
    return meta


def markdown(text: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(source: str) -> NotebookNode:
    return nbformat.v4.new_code_cell(source.strip("\n"))


def readonly(source: str, grade_id: str) -> NotebookNode:
    cell = code(source)
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=False, solution=False, locked=True)
    cell.metadata["editable"] = False
    cell.metadata["deletable"] = False
    return cell


def solution(source: str, grade_id: str) -> NotebookNode:
    if "### BEGIN SOLUTION" not in source or "### END SOLUTION" not in source:
        raise ValueError(
            f"solution cell {grade_id!r}: mark the answer with '### BEGIN SOLUTION' and "
            "'### END SOLUTION' lines, so that the release keeps the function's signature"
        )
    cell = code(source)
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=False, solution=True, locked=False)
    return cell


def tests(source: str, grade_id: str, points: float) -> NotebookNode:
    if not points > 0:
        raise ValueError(f"test cell {grade_id!r}: points must be > 0, got {points}")
    cell = code(source)
    cell.metadata["nbgrader"] = _nbgrader(grade_id, grade=True, solution=False, locked=True, points=points)
    cell.metadata["editable"] = False
    cell.metadata["deletable"] = False
    return cell


def notebook(cells: list[NotebookNode]) -> NotebookNode:
    """A notebook with the workbook's kernelspec and stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    counts: dict[str, int] = {}
    for cell in cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id:
            cell["id"] = grade_id
        else:
            counts[cell.cell_type] = counts.get(cell.cell_type, 0) + 1
            cell["id"] = f"{cell.cell_type}-{counts[cell.cell_type]}"
    nb.cells = cells
    return nb


def write(nb: NotebookNode, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return path
