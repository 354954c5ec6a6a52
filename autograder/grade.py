"""Autograde every submission, write feedback, export the grades: robust, parallel, incremental.

    python -m autograder.grade                  # (make grade) every student in autograder/submitted/
    python -m autograder.grade alice bob        # only these students
    python -m autograder.grade -j 4 --quick     # 4 workers; the notebooks' experiments in quick mode
    python -m autograder.grade --force          # re-grade unchanged submissions too
    python -m autograder.grade --db-url postgresql://grader@localhost/course

Steps: (1) nbgrader generate_assignment records solutions/lab0.1 in the gradebook (its output goes
to a temporary directory: notebooks/ is only compared, with a warning when it is stale); (2) each
student whose submission, solutions/ or grader changed since their last grading is graded by
`python -m autograder.student` in a subprocess, `--jobs` at a time, each kernel with cores/jobs
torch threads: every notebook is restored from solutions/ with the student's answers put in and run
cell by cell in a sandboxed kernel (autograder/executor.py, autograder/sandbox.py) into
autograder/executed/<student>/; a student's log goes to autograder/logs/<student>.log; a worker that
fails or runs past its time costs that student only the notebooks it did not finish; (3) the scores
go into the gradebook (nbgrader autograde with the executed notebooks: SaveAutoGrades only) and
autograder/autograded/<student>/; (4) HTML feedback in autograder/feedback/<student>/lab0.1/
(autograder/feedback.py); (5) nbgrader's CSV export writes autograder/grades.csv; (6) a table of
scores per notebook is printed. A progress bar runs on stderr.

Not handled: collecting submissions (copy them into autograder/submitted/<student>/lab0.1/) and
manual grading (every graded cell of the workbook is an autograded test cell).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from autograder import feedback, sandbox, similarity
from autograder.course import (
    ASSIGNMENT,
    COURSE_ID,
    FEEDBACK_DIR,
    GRADEBOOK_URL_ENV,
    GRADES_CSV,
    RELEASE_DIR,
    ROOT,
    SOURCE_DIR,
    SUBMITTED_DIR,
    configure,
    db_url,
    notebooks,
    quiet_sqlalchemy,
    read_notebook,
    run_nbgrader,
    write_notebook,
)
from autograder.release import generate_assignment, sync
from autograder.student import EXECUTED_DIR, executed_dir, log_path


@dataclass
class GradeRun:
    """What one grading run did: seconds per step and per student, and the scores it recorded."""

    seconds: dict[str, float] = field(default_factory=dict)  # "record", "export", "autograde <id>"
    scores: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    stale_release: list[str] = field(default_factory=list)  # how notebooks/ differs from solutions/
    skipped: list[str] = field(default_factory=list)  # unchanged since their last grading
    problems: dict[str, str] = field(default_factory=dict)  # student -> what went wrong grading them
    warnings: list[str] = field(default_factory=list)
    report: Path | None = None  # autograder/reports/similarity.csv: answers for a person to read


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


def record_grades(root: Path, student: str) -> str:
    """Write the scores of autograder/executed/<student>/ into the gradebook (nbgrader autograde with
    the notebooks already executed: no sanitizing, no execution, only SaveAutoGrades)."""
    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import AssignLatePenalties, SaveAutoGrades

    coursedir, config = _coursedir(root, student)
    coursedir.submitted_directory = EXECUTED_DIR
    app = Autograde(coursedir=coursedir, config=config)
    app.sanitize_preprocessors = []
    app.autograde_preprocessors = [SaveAutoGrades, AssignLatePenalties]
    app.force = True
    app.create_student = True
    return run_nbgrader(app, f"record grades of {student}")


def write_feedback(root: Path, student: str) -> list[Path]:
    """autograder/feedback/<student>/lab0.1/<notebook>.html from the executed notebooks."""
    out_dir = Path(root) / FEEDBACK_DIR / student / ASSIGNMENT
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks(executed_dir(root, student)):
        page = out_dir / f"{path.stem}.html"
        page.write_text(feedback.render(read_notebook(path), student, path.stem), encoding="utf-8")
        written.append(page)
    return written


# --------------------------------------------------------------------------------------------------
# Incremental, parallel grading
# --------------------------------------------------------------------------------------------------


def fingerprint(root: Path, student: str, quick: bool) -> str:
    """A hash of what a student's grade depends on: the submission, solutions/, the grader's code."""
    h = hashlib.sha256(f"quick={quick}".encode())
    root = Path(root)
    parts = sorted((root / SUBMITTED_DIR / student / ASSIGNMENT).rglob("*"))
    parts += notebooks(root / SOURCE_DIR / ASSIGNMENT)
    here = Path(__file__).resolve().parent
    parts += sorted(here.glob("*.py")) + sorted((here.parent / "labkit" / "grading").glob("*.py"))
    for p in parts:
        if p.is_file():
            h.update(str(p.name).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _state_path(root: Path, student: str) -> Path:
    return executed_dir(root, student).parent / "grade-state.json"


def up_to_date(root: Path, student: str, print_: str, graded: set[str]) -> bool:
    path = _state_path(root, student)
    try:
        return student in graded and json.loads(path.read_text())["fingerprint"] == print_
    except (OSError, ValueError, KeyError):
        return False


@dataclass
class Options:
    """How `make grade` grades: workers, quick mode, limits."""

    jobs: int = 1
    quick: bool = False
    cell_timeout: float = 600.0  # seconds per cell
    notebook_budget: float = 1800.0  # seconds per notebook
    memory_gib: float = 8.0  # address space of one kernel
    force: bool = False  # re-grade students whose submission did not change

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")

    @property
    def threads(self) -> int:
        """Torch/OpenMP threads per kernel: the cores split over the workers, and no more than the
        grader's own OMP_NUM_THREADS when set (a shared machine: busy-waiting threads crawl)."""
        share = max(1, (os.cpu_count() or 1) // self.jobs)
        cap = os.environ.get("OMP_NUM_THREADS", "")
        return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def _grade_in_subprocess(root: Path, student: str, scratch: Path, slot: int, opts: Options, parallel: int = 1) -> str:
    """Run autograder.student for one student; '' when it finished, else what went wrong."""
    n_notebooks = max(1, len(notebooks(root / SOURCE_DIR / ASSIGNMENT)))
    wall = n_notebooks * (opts.notebook_budget + 120) + 60
    cmd = [sys.executable, "-m", "autograder.student", str(root), student, str(scratch), str(slot),
           f"--threads={opts.threads}", f"--cell-timeout={opts.cell_timeout}",
           f"--notebook-budget={opts.notebook_budget}", f"--memory-gib={opts.memory_gib}",
           f"--parallel={parallel}"]  # fmt: skip
    if opts.quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    log = log_path(root, student)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=wall,
                                  start_new_session=True)  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"grading {student} took more than {wall:.0f} s and was stopped"
    return "" if proc.returncode == 0 else f"grading {student} failed (exit status {proc.returncode})"


def _complete_missing(root: Path, student: str, problem: str) -> None:
    """After a failed worker: every notebook it did not write scores 0, with the reason."""
    from autograder.executor import error_output, is_test_cell, restore

    out_dir = executed_dir(root, student)
    out_dir.mkdir(parents=True, exist_ok=True)
    for source_path in notebooks(Path(root) / SOURCE_DIR / ASSIGNMENT):
        target = out_dir / source_path.name
        if target.exists():
            continue
        nb = restore(read_notebook(source_path), None)
        for cell in nb.cells:
            if is_test_cell(cell):
                cell.outputs = [error_output("GradingError", problem)]
                cell.metadata["labkit"] = {"failed": "visible", "message": problem}
        write_notebook(nb, target)


def _share_assets() -> None:
    """Let the sandbox's uid read the asset cache (public files; root's cache is 0600 by default)."""
    from labkit import assets

    home = assets.home()
    for p in [home, *home.rglob("*")]:
        try:
            mode = p.stat().st_mode
            p.chmod(mode | (0o555 if p.is_dir() else 0o444))
        except OSError:
            pass


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
    options: Options | None = None,
    log=print,
) -> GradeRun:
    """The whole grading pass (see the module docstring) for `students` (default: all)."""
    opts = options or Options()
    root = Path(root).resolve()
    students = submitted_students(root) if students is None else students
    if not students:
        raise FileNotFoundError(
            f"no submissions: expected folders {SUBMITTED_DIR}/<student>/{ASSIGNMENT}/ "
            f"under {root}; copy each student's notebooks there first"
        )
    result = GradeRun()
    if sandbox.warning():
        log(sandbox.warning())
        result.warnings.append(sandbox.warning())
    t = time.perf_counter()
    result.stale_release = record_assignment(root)
    result.seconds["record"] = time.perf_counter() - t
    _share_assets()
    graded = set(read_scores(root))
    prints = {s: fingerprint(root, s, opts.quick) for s in students}
    todo = [s for s in students if opts.force or not up_to_date(root, s, prints[s], graded)]
    result.skipped = [s for s in students if s not in todo]
    # The longest first (the most notebooks submitted), so that no worker is left with one at the end.
    todo.sort(key=lambda s: -len(list((root / SUBMITTED_DIR / s / ASSIGNMENT).glob("*.ipynb"))))
    if result.skipped:
        log(f"{len(result.skipped)} unchanged submission(s) not re-graded (--force re-grades them)")
    counter = itertools.count()
    parallel = max(1, opts.jobs // max(1, len(todo)))  # fewer students than workers: their notebooks at once
    slots: queue.Queue[int] = queue.Queue()
    for k in range(opts.jobs):
        slots.put(k)
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        Path(tmp).chmod(0o711)

        def one(student: str) -> tuple[str, str, float]:
            slot = slots.get()
            t0 = time.perf_counter()
            try:
                scratch = Path(tmp) / f"s{slot}-{next(counter)}"  # short: Unix socket paths live under it
                problem = _grade_in_subprocess(root, student, scratch, slot, opts, parallel)
            except Exception as e:  # never let one student stop the run
                problem = f"grading {student} failed: {type(e).__name__}: {e}"
            finally:
                slots.put(slot)
            return student, problem, time.perf_counter() - t0

        bar = tqdm(total=len(todo), desc="grading", unit="student", file=sys.stderr, disable=not todo)
        with ThreadPoolExecutor(opts.jobs) as pool:
            for future in as_completed([pool.submit(one, s) for s in todo]):
                student, problem, seconds = future.result()
                result.seconds[f"autograde {student}"] = seconds
                if problem:
                    result.problems[student] = problem
                    _complete_missing(root, student, problem)
                try:
                    record_grades(root, student)
                    if feedback:
                        write_feedback(root, student)
                    _state_path(root, student).write_text(json.dumps({"fingerprint": prints[student]}))
                except Exception as e:
                    result.problems[student] = f"recording {student}'s grades failed: {type(e).__name__}: {e}"
                bar.set_postfix_str(f"{student} {seconds:.0f} s")
                bar.update(1)
                note = f"  ({result.problems[student]}; see {log_path(root, student)})" if problem else ""
                log(f"graded {student:<24} {seconds:6.1f} s{note}")
        bar.close()
    if export:
        t = time.perf_counter()
        export_csv(root)
        result.seconds["export"] = time.perf_counter() - t
    result.scores = read_scores(root)
    result.report = similarity.write_report(root, students, lambda s: executed_dir(root, s))
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
    parser.add_argument("students", nargs="*", help="student ids (default: every folder in autograder/submitted)")
    parser.add_argument("--no-feedback", action="store_true", help="skip the HTML feedback")
    parser.add_argument("--root", type=Path, default=ROOT, help="course root (default: this repository)")
    parser.add_argument("-j", "--jobs", type=int, default=max(1, os.cpu_count() or 1), help="parallel workers")
    parser.add_argument("--quick", action="store_true", help="the notebooks' experiments in quick mode")
    parser.add_argument("--force", action="store_true", help="re-grade unchanged submissions too")
    parser.add_argument("--cell-timeout", type=float, default=600.0, help="seconds per cell")
    parser.add_argument("--notebook-budget", type=float, default=1800.0, help="seconds per notebook")
    parser.add_argument("--db-url", default=None, help="gradebook URL, e.g. postgresql://user@host/db")
    opts = parser.parse_args(argv)
    root = opts.root.resolve()
    options = Options(jobs=opts.jobs, quick=opts.quick, cell_timeout=opts.cell_timeout,
                      notebook_budget=opts.notebook_budget, force=opts.force)  # fmt: skip
    if opts.db_url:
        os.environ[GRADEBOOK_URL_ENV] = opts.db_url
    try:
        result = run(root, opts.students or None, feedback=not opts.no_feedback, options=options)
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
    for student, problem in sorted(result.problems.items()):
        print(f"note: {problem}; log: {log_path(root, student)}")
    flagged = len(result.report.read_text().splitlines()) - 1 if result.report else 0
    print(
        f"similarity report: {result.report} ({flagged} answer(s) to read: near copies of the reference, "
        "side doors to it)"
    )
    print(f"grades: {root / GRADES_CSV}\nfeedback: {root / FEEDBACK_DIR}/<student>/{ASSIGNMENT}/*.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
