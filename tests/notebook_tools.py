"""Helpers shared by the notebook tests: the typical-mistake specs and a temporary graded course.

A mistake spec is tests/mistakes/<notebook stem>.py defining MISTAKES, a list of `Mistake`
(format: tests/mistakes/README.md). `apply_mistake` edits a solution notebook the way a student
would; `grade_submissions` autogrades a set of submissions in a throw-away course with `make
grade`'s machinery (parallel, sandboxed) and returns the scores and the executed notebooks.
"""

from __future__ import annotations

import copy
import re
import runpy
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode

# The autograder package lives at the repository root, which pytest does not put on sys.path.
_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from autograder import course, grade  # noqa: E402

REPO = course.ROOT
SOLUTIONS = REPO / course.SOURCE_DIR / course.ASSIGNMENT
RELEASE = REPO / course.RELEASE_DIR / course.ASSIGNMENT
MISTAKES_DIR = Path(__file__).resolve().parent / "mistakes"

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer: edit a solution cell, then exactly the `lost` test cells score 0.

    name: short slug (a-z, 0-9, '-'), unique within the notebook's spec file.
    cell: grade_id of the solution cell to edit (a student can only edit solution cells).
    find / replace: `find` must occur exactly once in that cell's source; it becomes `replace`.
    lost: grade_ids of the graded test cells that must score 0; every other graded cell of the
        notebook must keep full marks. [] declares an alternative correct answer.
    says: text that each lost cell's error output must contain (the message a student would read).
    also: more (cell, find, replace) edits applied after the first, for mistakes spanning cells.
    alone: grade it as the only mistake of its submission (see `pack_mistakes`); for mistakes whose
        point is that they cost no later task (an unwritten task, say).
    """

    name: str
    cell: str
    find: str
    replace: str
    lost: list[str]
    says: str = ""
    also: list[tuple[str, str, str]] = field(default_factory=list)
    alone: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"Mistake name {self.name!r}: use 1-41 characters of a-z, 0-9 and '-'")
        if self.find == self.replace:
            raise ValueError(f"Mistake {self.name!r}: find and replace are equal, so nothing changes")
        if isinstance(self.lost, str):
            raise TypeError(
                f"Mistake {self.name!r}: lost must be a list of grade_ids, got the string "
                f"{self.lost!r}; write lost=[{self.lost!r}]"
            )

    @property
    def edits(self) -> list[tuple[str, str, str]]:
        return [(self.cell, self.find, self.replace), *self.also]


def solution_notebooks() -> list[Path]:
    return course.notebooks(SOLUTIONS)


def load_mistakes(stem: str) -> list[Mistake]:
    """MISTAKES of tests/mistakes/<stem>.py ([] when the file does not exist)."""
    path = MISTAKES_DIR / f"{stem}.py"
    if not path.exists():
        return []
    mistakes = runpy.run_path(str(path)).get("MISTAKES")
    if not isinstance(mistakes, list) or not all(isinstance(m, Mistake) for m in mistakes):
        raise TypeError(f"{path}: define MISTAKES = [Mistake(...), ...]")
    names = [m.name for m in mistakes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: mistake names must be unique; repeated: {duplicates}")
    return mistakes


def mistake_specs() -> list[tuple[str, Mistake]]:
    """(notebook stem, mistake) for every spec file in tests/mistakes/."""
    return [(p.stem, m) for p in sorted(MISTAKES_DIR.glob("*.py")) for m in load_mistakes(p.stem)]


def nbgrader_meta(cell: NotebookNode) -> dict:
    return cell.metadata.get("nbgrader", {})


def graded_cells(nb: NotebookNode) -> dict[str, float]:
    """{grade_id: points} of the graded cells."""
    return {
        nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c)["points"])
        for c in nb.cells
        if nbgrader_meta(c).get("grade")
    }


def pack_mistakes(nb: NotebookNode, mistakes: list[Mistake], size: int = 4) -> list[list[Mistake]]:
    """The mistakes of one notebook in packs of at most `size`, each pack graded as one submission.

    Grading a submission costs a whole notebook run, and one mistake usually touches one task, so
    mistakes of different tasks share a submission: the pack must lose exactly the union of their
    `lost` cells. Within a pack the mistakes edit different cells, and their spans (first edited cell
    to last edited or lost cell, in notebook order) do not overlap, so a later mistake cannot change
    what an earlier one's cells show. What a pack cannot tell apart: an earlier mistake that would
    also cost exactly a later one's listed cells; mistakes for which that is the point are `alone`.
    Greedy, in file order: each mistake joins the first pack it fits.
    """
    order = {nbgrader_meta(c).get("grade_id"): i for i, c in enumerate(nb.cells) if nbgrader_meta(c)}

    def span(m: Mistake) -> tuple[int, int]:
        edited = [order[cell] for cell, _, _ in m.edits]
        return min(edited), max(edited + [order[cell] for cell in m.lost])

    packs: list[list[Mistake]] = []
    for m in mistakes:
        lo, hi = span(m)
        home = None if m.alone else next(
            (p for p in packs if len(p) < size and not p[0].alone
             and all(span(o)[1] < lo or hi < span(o)[0] for o in p)),
            None,
        )
        if home is None:
            packs.append([m])
        else:
            home.append(m)
    return packs


def apply_mistakes(nb: NotebookNode, mistakes: list[Mistake]) -> NotebookNode:
    """A copy of nb with every mistake's edits applied (a pack: see `pack_mistakes`)."""
    for m in mistakes:
        nb = apply_mistake(nb, m)
    return nb


def apply_mistake(nb: NotebookNode, mistake: Mistake) -> NotebookNode:
    """A copy of nb with the mistake's edits applied; raises ValueError when a spec does not fit."""
    nb = copy.deepcopy(nb)
    by_id = {nbgrader_meta(c).get("grade_id"): c for c in nb.cells}
    for cell_id, find, replace in mistake.edits:
        cell = by_id.get(cell_id)
        if cell is None:
            raise ValueError(
                f"mistake {mistake.name!r}: no cell with grade_id {cell_id!r}; "
                f"solution cells: {[k for k, c in by_id.items() if k and nbgrader_meta(c).get('solution')]}"
            )
        if not nbgrader_meta(cell).get("solution"):
            raise ValueError(
                f"mistake {mistake.name!r}: cell {cell_id!r} is not a solution cell; autograde "
                "restores every other nbgrader cell, so a student cannot make this edit"
            )
        count = cell.source.count(find)
        if count != 1:
            raise ValueError(
                f"mistake {mistake.name!r}: {find!r} occurs {count} times in cell {cell_id!r} "
                "(it must occur exactly once; quote more of the line)"
            )
        cell.source = cell.source.replace(find, replace)
    return nb


def error_text(cell: NotebookNode) -> str:
    """The error and stderr outputs of an executed cell, as plain text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
        elif out.output_type == "stream" and out.name == "stderr":
            parts.append(out.text)
    return "\n".join(parts)


def execution_seconds(nb: NotebookNode) -> float:
    """Kernel time from the first cell's start to the last cell's reply (nbclient's timing metadata)."""
    from datetime import datetime

    stamps = []
    for cell in nb.cells:
        timing = cell.metadata.get("execution", {})
        for key in ("iopub.execute_input", "shell.execute_reply"):
            if key in timing:
                stamps.append(datetime.fromisoformat(timing[key].replace("Z", "+00:00")))
    return (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0


# --------------------------------------------------------------------------------------------------
# A temporary course with submissions, autograded in parallel worker processes
# --------------------------------------------------------------------------------------------------


@dataclass
class Graded:
    """Scores and executed notebooks of every student of a grading run."""

    scores: dict[
        str, dict[str, dict[str, tuple[float, float]]]
    ]  # student -> notebook -> grade_id -> (s, max)
    autograded: dict[str, dict[str, Path]]  # student -> notebook stem -> executed notebook
    feedback: dict[str, dict[str, Path]]  # student -> notebook stem -> feedback html
    seconds: dict[str, float]  # "record (worker i)", "autograde <student>", "feedback", "total"
    roots: list[Path]


def make_course(root: Path, submissions: dict[str, dict[str, NotebookNode]]) -> Path:
    """A course at root: solutions/ copied from the repository, each submission under autograder/submitted."""
    shutil.copytree(SOLUTIONS, root / course.SOURCE_DIR / course.ASSIGNMENT)
    for student, nbs in submissions.items():
        folder = root / course.SUBMITTED_DIR / student / course.ASSIGNMENT
        folder.mkdir(parents=True)
        for stem, nb in nbs.items():
            nbformat.write(nb, str(folder / f"{stem}.ipynb"))
    return root


def grade_submissions(
    base: Path,
    submissions: dict[str, dict[str, NotebookNode]],
    jobs: int = 2,
    env: dict[str, str] | None = None,
) -> Graded:
    """Autograde (with feedback and CSV export) the submissions in one course with `jobs` workers.

    `make grade`'s own machinery: each student in a subprocess, each kernel sandboxed with cores/jobs
    torch threads; env's LABKIT_QUICK ("1" by default) picks the notebooks' quick mode.
    """
    start = time.perf_counter()
    root = make_course(base / "course", submissions)
    quick = (env or {}).get("LABKIT_QUICK", "1") == "1"
    options = grade.Options(jobs=max(1, min(jobs, len(submissions))), quick=quick)
    run = grade.run(root, sorted(submissions), options=options, log=lambda *_: None)
    autograded, feedback = {}, {}
    for student in submissions:
        done = root / course.AUTOGRADED_DIR / student / course.ASSIGNMENT
        html = root / course.FEEDBACK_DIR / student / course.ASSIGNMENT
        autograded[student] = {p.stem: p for p in done.glob("*.ipynb")}
        feedback[student] = {p.stem: p for p in html.glob("*.html")}
    seconds = dict(run.seconds, total=time.perf_counter() - start)
    return Graded(run.scores, autograded, feedback, seconds, [root])
