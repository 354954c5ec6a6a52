"""Autograde every submission, write feedback, export the grades.

    python -m autograder.grade                 # (make grade) every student in autograder/submitted/
    python -m autograder.grade alice bob       # only these students
    python -m autograder.grade --no-feedback   # skip the HTML feedback

Steps: (1) nbgrader generate_assignment records solutions/lab0.1 in autograder/gradebook.db (its
output goes to a temporary directory: notebooks/ is never touched, only compared, with a warning when
it is stale); (2) nbgrader autograde (--force, --create: unknown students are added) runs each
student's autograder/submitted/<student>/lab0.1/*.ipynb with the locked cells, the test cells
with their hidden tests included, restored from the gradebook; a notebook missing from a submission
scores 0; (3) nbgrader generate_feedback writes autograder/feedback/<student>/lab0.1/*.html;
(4) nbgrader's CSV export writes autograder/grades.csv (one row per student); (5) a table of scores
per notebook is printed.

Not handled: collecting submissions (copy them into autograder/submitted/<student>/lab0.1/) and
manual grading (every graded cell of the workbook is an autograded test cell).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from autograder.course import (
    ASSIGNMENT,
    COURSE_ID,
    FEEDBACK_DIR,
    GRADES_CSV,
    RELEASE_DIR,
    ROOT,
    SOURCE_DIR,
    SUBMITTED_DIR,
    configure,
    db_url,
    notebooks,
    quiet_sqlalchemy,
    run_nbgrader,
)
from autograder.release import generate_assignment, sync


@dataclass
class GradeRun:
    """What one grading run did: seconds per step and per student, and the scores it recorded."""

    seconds: dict[str, float] = field(
        default_factory=dict
    )  # "record", "feedback", "export", "autograde <id>"
    scores: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    stale_release: list[str] = field(default_factory=list)  # how notebooks/ differs from solutions/


def submitted_students(root: Path = ROOT) -> list[str]:
    """Students with a folder autograder/submitted/<student>/lab0.1/."""
    base = Path(root) / SUBMITTED_DIR
    return sorted(p.parent.name for p in base.glob(f"*/{ASSIGNMENT}") if p.is_dir())


def _coursedir(root: Path, student: str = "*"):
    from nbgrader.coursedir import CourseDirectory

    config = configure(root=root)
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = ASSIGNMENT
    coursedir.student_id = student
    return coursedir, config


def record_assignment(root: Path = ROOT) -> list[str]:
    """Put solutions/lab0.1 into the gradebook (nbgrader generate_assignment with the database).

    Returns how root's notebooks/ differs from the release this generates ([] when up to date).
    """
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        generated = generate_assignment(root, Path(tmp), with_db=True)
        return sync(generated, Path(root) / RELEASE_DIR / ASSIGNMENT, write=False)


def autograde(root: Path, student: str) -> str:
    """nbgrader autograde lab0.1 for one student (--force --create); returns nbgrader's log."""
    from nbgrader.converters import Autograde

    coursedir, config = _coursedir(root, student)
    app = Autograde(coursedir=coursedir, config=config)
    app.force = True
    app.create_student = True
    return run_nbgrader(app, f"autograde {student}")


def generate_feedback(root: Path, student: str = "*") -> str:
    """nbgrader generate_feedback lab0.1 (HTML with the feedback template) for one or all students."""
    from nbgrader.converters import GenerateFeedback

    coursedir, config = _coursedir(root, student)
    config.HTMLExporter.template_name = "feedback"
    app = GenerateFeedback(coursedir=coursedir, config=config)
    app.force = True
    return run_nbgrader(app, "generate_feedback")


def export_csv(root: Path = ROOT, path: Path | None = None) -> Path:
    """nbgrader's CSV export (one row per student and assignment) to autograder/grades.csv."""
    from nbgrader.api import Gradebook
    from nbgrader.plugins import CsvExportPlugin

    path = Path(path or Path(root) / GRADES_CSV)
    plugin = CsvExportPlugin(config=configure(root=root))
    plugin.to = str(path)
    with quiet_sqlalchemy(), Gradebook(db_url(root), COURSE_ID) as gb:
        plugin.export(gb)
    return path


def read_scores(root: Path = ROOT) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """{student: {notebook: {graded cell's grade_id: (score, max_score)}}} from the gradebook."""
    from nbgrader.api import Gradebook

    out: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    with quiet_sqlalchemy(), Gradebook(db_url(root), COURSE_ID) as gb:
        for submission in gb.find_assignment(ASSIGNMENT).submissions:
            per_nb = out.setdefault(submission.student_id, {})
            for nb in submission.notebooks:
                per_nb[nb.name] = {g.name: (float(g.score), float(g.max_score)) for g in nb.grades}
    return out


def run(
    root: Path = ROOT,
    students: list[str] | None = None,
    *,
    feedback: bool = True,
    export: bool = True,
    log=print,
) -> GradeRun:
    """The whole grading pass (steps 1-4 of the module docstring) for `students` (default: all)."""
    root = Path(root).resolve()
    students = submitted_students(root) if students is None else students
    if not students:
        raise FileNotFoundError(
            f"no submissions: expected folders {SUBMITTED_DIR}/<student>/{ASSIGNMENT}/ "
            f"under {root}; copy each student's notebooks there first"
        )
    result = GradeRun()
    t = time.perf_counter()
    result.stale_release = record_assignment(root)
    result.seconds["record"] = time.perf_counter() - t
    for student in students:
        t = time.perf_counter()
        autograde(root, student)
        result.seconds[f"autograde {student}"] = time.perf_counter() - t
        log(f"autograded {student:<24} {result.seconds[f'autograde {student}']:6.1f} s")
    if feedback:
        t = time.perf_counter()
        generate_feedback(root)
        result.seconds["feedback"] = time.perf_counter() - t
    if export:
        t = time.perf_counter()
        export_csv(root)
        result.seconds["export"] = time.perf_counter() - t
    result.scores = read_scores(root)
    return result


def table(scores: dict[str, dict[str, dict[str, tuple[float, float]]]], notebook_names: list[str]) -> str:
    """A plain-text table: one row per student, one column per notebook, and the total."""
    cols = [n.split("_", 1)[0] for n in notebook_names]  # "01_text_to_tokens" -> "01"
    width = max([len("student")] + [len(s) for s in scores])
    head = f"{'student':<{width}}  " + "  ".join(f"{c:>11}" for c in cols) + f"  {'total':>13}"
    rows = [head, "-" * len(head)]
    for student in sorted(scores):
        cells, got, top = [], 0.0, 0.0
        for name in notebook_names:
            grades = scores[student].get(name, {})
            s, m = sum(v[0] for v in grades.values()), sum(v[1] for v in grades.values())
            got, top = got + s, top + m
            cells.append(f"{s:>5g}/{m:<5g}" if grades else f"{'-':>11}")
        pct = f"{100 * got / top:3.0f}%" if top else ""
        rows.append(f"{student:<{width}}  " + "  ".join(cells) + f"  {got:>5g}/{top:<5g} {pct}")
    rows.append("notebooks: " + ", ".join(notebook_names))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.grade", description=__doc__.split("\n")[0])
    parser.add_argument(
        "students", nargs="*", help="student ids (default: every folder in autograder/submitted)"
    )
    parser.add_argument("--no-feedback", action="store_true", help="skip nbgrader generate_feedback")
    parser.add_argument("--root", type=Path, default=ROOT, help="course root (default: this repository)")
    opts = parser.parse_args(argv)
    root = opts.root.resolve()
    try:
        result = run(root, opts.students or None, feedback=not opts.no_feedback)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 1
    if result.stale_release:
        print(
            f"warning: {RELEASE_DIR}/{ASSIGNMENT} differs from a fresh release of solutions/ "
            f"({'; '.join(result.stale_release)}); students may hold an old release. Grading used "
            "solutions/ (locked and test cells are restored from it)."
        )
    names = [p.stem for p in notebooks(root / SOURCE_DIR / ASSIGNMENT)]
    print(table(result.scores, names))
    print(f"grades: {root / GRADES_CSV}\nfeedback: {root / FEEDBACK_DIR}/<student>/{ASSIGNMENT}/*.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
