"""The workbook's notebooks: clean, released, executable, and graded as intended.

Generic over every solutions/lab0.1/*.ipynb. The expensive part, running notebooks, happens once per
submission in one session-scoped autograde run (`graded`): the students are "solution" (every
solution notebook as submitted work), "release" (every notebook of a fresh release, untouched) and
"mistakes-<stem>-<k>" (one notebook with a pack of typical mistakes from tests/mistakes/<stem>.py
applied: mistakes of different tasks share a run, see notebook_tools.pack_mistakes).
Those executions serve several tests:

- the solution notebooks run top to bottom without an error (the autograde of "solution" runs them
  through nbgrader's Execute, an nbconvert ExecutePreprocessor, in the venv's python3 kernel);
- `nbgrader validate` holds on the solutions, and `nbgrader validate --invert` on the release: nbgrader's
  own Validator judges the notebooks autograde executed (its preprocessors are reduced to the metadata
  check, so that nothing runs twice);
- the solutions score full marks, the release zero, each pack of mistakes loses exactly the cells its
  mistakes list, and each mistake's lost cells show its message.

Environment: LABKIT_NOTEBOOKS (comma-separated stems or globs) restricts everything to those notebooks,
e.g. while writing one chapter; LABKIT_NOTEBOOK_JOBS sets the number of parallel autograde workers
(default min(2, cores)); each worker's kernels get cores/jobs OpenMP threads. The notebooks run with
LABKIT_QUICK=1 (their quick mode: smaller experiments, the same graded checks) unless LABKIT_QUICK is
already set, e.g. LABKIT_QUICK=0 for the students' full-size run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
pytest.importorskip("nbclient", reason="needs the dev extras: pip install -e '.[dev]'")
import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from notebook_tools import (  # noqa: E402
    RELEASE,
    SOLUTIONS,
    Mistake,
    apply_mistake,
    apply_mistakes,
    error_text,
    execution_seconds,
    grade_submissions,
    graded_cells,
    mistake_specs,
    nbgrader_meta,
    pack_mistakes,
    solution_notebooks,
)

from autograder import course  # noqa: E402
from autograder.preprocessors import stub_message, task_titles  # noqa: E402
from autograder.release import generate_assignment  # noqa: E402

# LABKIT_NOTEBOOKS="01_*,03_kv_cache" limits every test here, the autograde run included, to those notebooks.
_ONLY = [p.strip() for p in os.environ.get("LABKIT_NOTEBOOKS", "").split(",") if p.strip()]
NOTEBOOKS = [p for p in solution_notebooks() if not _ONLY or any(fnmatch.fnmatch(p.stem, g) for g in _ONLY)]
STEMS = [p.stem for p in NOTEBOOKS]
MISTAKES = [(stem, m) for stem, m in mistake_specs() if stem in STEMS or not _ONLY]
# The notebooks' quick mode (smaller experiments, the same graded checks) unless LABKIT_QUICK is set.
NOTEBOOK_ENV = {"LABKIT_QUICK": os.environ.get("LABKIT_QUICK", "1")}
JOBS = int(os.environ.get("LABKIT_NOTEBOOK_JOBS", str(min(2, os.cpu_count() or 1))))


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


# Each notebook's mistakes in packs, one autograde run per pack: {(stem, mistake name): (student, pack)}
PACKS = {
    (stem, m.name): (f"mistakes-{stem}-{k}", pack)
    for stem in dict.fromkeys(s for s, _ in MISTAKES)
    for k, pack in enumerate(pack_mistakes(_read(SOLUTIONS / f"{stem}.ipynb"), [m for s, m in MISTAKES if s == stem]))
    for m in pack
}


# --------------------------------------------------------------------------------------------------
# Cheap checks: committed files, conventions, the release
# --------------------------------------------------------------------------------------------------


def test_there_are_solution_notebooks():
    assert NOTEBOOKS, f"no notebooks in {SOLUTIONS}"


@pytest.mark.parametrize(
    "path", NOTEBOOKS + course.notebooks(RELEASE), ids=lambda p: f"{p.parent.parent.name}/{p.stem}"
)
def test_committed_notebook_is_clean(path):
    nb = _read(path)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {cell.id} carries outputs; run `make release`"
            assert cell.execution_count is None, f"{path.name}: cell {cell.id} has an execution count"
    cleaned = course.clean_notebook(_read(path))
    assert cleaned == nb, f"{path.name} carries volatile metadata (run `make release`, which cleans it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_authoring_conventions(path):
    """grade_ids, solution regions, test cells after each task, a 'Task ...' heading per task."""
    nb = _read(path)
    ids = [nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), (
        f"{path.name}: repeated grade_ids {sorted({i for i in ids if ids.count(i) > 1})}"
    )
    pattern = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
    assert all(pattern.match(i) for i in ids), f"{path.name}: grade_ids must be a-z, 0-9, '-', '_': {ids}"
    titles = task_titles(nb)
    pending = None  # the solution cell still waiting for its test cell
    assert any(nbgrader_meta(c).get("grade") for c in nb.cells), f"{path.name} has no graded test cell"
    for index, cell in enumerate(nb.cells):
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            assert pending is None, f"{path.name}: solution cell {pending!r} has no graded test cell after it"
            assert cell.cell_type == "code" and "### BEGIN SOLUTION" in cell.source, (
                f"{path.name}: solution cell {meta['grade_id']!r} needs a '### BEGIN SOLUTION' region"
            )
            assert titles[index], f"{path.name}: no '## Task ...' markdown heading above {meta['grade_id']!r}"
            assert not meta.get("grade"), (
                f"{path.name}: {meta['grade_id']!r}: autograded answers are not graded"
            )
            pending = meta["grade_id"]
        elif meta.get("grade"):
            assert cell.cell_type == "code" and meta.get("locked"), (
                f"{path.name}: {meta['grade_id']!r} must be locked code"
            )
            assert float(meta["points"]) > 0, f"{path.name}: {meta['grade_id']!r} has no points"
            pending = None
        else:
            assert "BEGIN SOLUTION" not in cell.source, (
                f"{path.name}: solution region outside a solution cell"
            )
            assert "BEGIN HIDDEN TESTS" not in cell.source, f"{path.name}: hidden tests outside a test cell"
    assert pending is None, f"{path.name}: solution cell {pending!r} has no graded test cell after it"
    assert any("### BEGIN HIDDEN TESTS" in c.source for c in nb.cells), f"{path.name} has no hidden tests"


@pytest.fixture(scope="module")
def fresh_release(tmp_path_factory) -> Path:
    t = time.perf_counter()
    out = generate_assignment(course.ROOT, tmp_path_factory.mktemp("release"))
    print(f"release generated in {time.perf_counter() - t:.1f} s")
    return out


def _comparable(nb) -> list[dict]:
    nb = course.clean_notebook(nb)
    return [
        {
            "id": c.get("id"),
            "type": c.cell_type,
            "source": c.source,
            "metadata": json.loads(json.dumps(c.metadata)),
        }
        for c in nb.cells
    ]


def test_release_has_the_same_files(fresh_release):
    ours = sorted(p.name for p in course.notebooks(fresh_release))
    committed = sorted(p.name for p in course.notebooks(RELEASE))
    assert committed == ours, "notebooks/lab0.1 is stale: run `make release`"


@pytest.mark.parametrize("stem", STEMS)
def test_release_is_up_to_date(fresh_release, stem):
    committed = RELEASE / f"{stem}.ipynb"
    assert committed.exists(), f"{committed} is missing: run `make release`"
    fresh, ours = _read(fresh_release / f"{stem}.ipynb"), _read(committed)
    assert _comparable(ours) == _comparable(fresh), (
        f"{committed} differs from a fresh release: run `make release`"
    )
    assert ours.metadata == fresh.metadata


@pytest.mark.parametrize("stem", STEMS)
def test_release_hides_solutions_and_names_tasks(fresh_release, stem):
    nb = _read(fresh_release / f"{stem}.ipynb")
    text = "\n".join(c.source for c in nb.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"the release of {stem} still contains {marker!r}"
    titles = task_titles(nb)
    for index, cell in enumerate(nb.cells):
        meta = nbgrader_meta(cell)
        if meta.get("solution"):
            message = json.dumps(stub_message(titles[index], meta["grade_id"]), ensure_ascii=False)
            assert f"raise NotImplementedError({message})" in cell.source, cell.source


def test_release_is_deterministic(fresh_release, tmp_path):
    again = generate_assignment(course.ROOT, tmp_path)
    for path in course.notebooks(fresh_release):
        assert (again / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} differs between two releases"
        )


def test_kernel_is_the_venv_python():
    """The python3 kernel that nbgrader and nbclient start is this interpreter (the venv's)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.prefix)")]
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == sys.prefix


# --------------------------------------------------------------------------------------------------
# One autograde run for the solution, the release and every typical mistake
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def graded(tmp_path_factory, pytestconfig):
    base = tmp_path_factory.mktemp("graded")
    release_dir = generate_assignment(course.ROOT, base / "release")
    solutions = {p.stem: _read(p) for p in NOTEBOOKS}
    submissions = {
        "solution": solutions,
        "release": {p.stem: _read(p) for p in course.notebooks(release_dir) if p.stem in STEMS},
    }
    for (stem, _), (student, pack) in PACKS.items():
        assert stem in solutions, f"tests/mistakes/{stem}.py has no notebook {SOLUTIONS / (stem + '.ipynb')}"
        submissions[student] = {stem: apply_mistakes(solutions[stem], pack)}
    result = grade_submissions(base, submissions, jobs=JOBS, env=NOTEBOOK_ENV)
    _report_times(result, pytestconfig)
    return result


def _report_times(graded, pytestconfig) -> None:
    """Write the timings to the terminal (whatever pytest captures): per step, student and notebook."""
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in graded.seconds.items())
    lines = [f"autograde run ({JOBS} workers): {steps}"]
    for student in ("solution", "release"):
        for stem, path in sorted(graded.autograded.get(student, {}).items()):
            lines.append(f"  {student:<8} {stem:<32} kernel time {execution_seconds(_read(path)):7.1f} s")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_solution_executes_without_error(graded, stem):
    nb = _read(graded.autograded["solution"][stem])
    for cell in nb.cells:
        assert not error_text(cell), (
            f"{stem}: cell {cell.get('id')} failed:\n{error_text(cell)}\n--- source ---\n{cell.source}"
        )


def _validate(path: Path, invert: bool) -> dict:
    """nbgrader's Validator on an already executed notebook (no second execution)."""
    from nbgrader.preprocessors import CheckCellMetadata
    from nbgrader.validator import Validator

    validator = Validator(invert=invert)
    validator.preprocessors = [CheckCellMetadata]
    return validator.validate(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_nbgrader_validate_passes_on_solution(graded, stem):
    assert _validate(graded.autograded["solution"][stem], invert=False) == {}


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_nbgrader_validate_invert_on_release(graded, stem):
    """Every graded test cell of the untouched release fails."""
    path = graded.autograded["release"][stem]
    assert _validate(path, invert=True) == {}
    nb = _read(path)
    for cell in nb.cells:
        if nbgrader_meta(cell).get("grade"):
            assert error_text(cell), (
                f"{stem}: test cell {nbgrader_meta(cell)['grade_id']} passes on the release"
            )


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_solution_gets_full_marks(graded, stem):
    expected = graded_cells(_read(SOLUTIONS / f"{stem}.ipynb"))
    got = graded.scores["solution"][stem]
    assert set(got) == set(expected)
    assert {k: s for k, (s, _) in got.items()} == expected


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_release_gets_zero(graded, stem):
    got = graded.scores["release"][stem]
    assert got and all(score == 0 for score, _ in got.values()), got


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "mistake"), MISTAKES, ids=[f"{s}-{m.name}" for s, m in MISTAKES])
def test_mistake_loses_exactly_its_cells(graded, stem, mistake):
    """The mistake's pack loses exactly the cells its mistakes list (disjoint: see pack_mistakes)."""
    points = graded_cells(_read(SOLUTIONS / f"{stem}.ipynb"))
    unknown = set(mistake.lost) - set(points)
    assert not unknown, f"mistake {mistake.name!r} lists cells that are not graded cells of {stem}: {unknown}"
    student, pack = PACKS[stem, mistake.name]
    lost = {cell for m in pack for cell in m.lost}
    got = {k: s for k, (s, _) in graded.scores[student][stem].items()}
    expected = {k: 0.0 if k in lost else p for k, p in points.items()}
    assert got == expected, (
        f"mistake {mistake.name!r}, graded with {[m.name for m in pack if m is not mistake]} (other tasks): "
        f"scores {got}, expected {expected}"
    )
    if mistake.says:
        nb = _read(graded.autograded[student][stem])
        for cell in nb.cells:
            if nbgrader_meta(cell).get("grade_id") in mistake.lost:
                assert mistake.says in error_text(cell), (
                    f"mistake {mistake.name!r}: cell {nbgrader_meta(cell)['grade_id']} does not say "
                    f"{mistake.says!r}; its error output:\n{error_text(cell)}"
                )


@pytest.mark.slow
def test_feedback_and_grades_csv(graded):
    for student, files in graded.autograded.items():
        assert set(graded.feedback[student]) == set(files), f"feedback missing for {student}"
    for root in graded.roots:
        rows = (root / course.GRADES_CSV).read_text().splitlines()
        assert rows[0].startswith("assignment,duedate,timestamp,student_id")
        assert len(rows) >= 2


def test_every_mistake_spec_applies():
    """Cheap: each spec names a solution cell, its `find` occurs once, its `lost` cells are graded."""
    for stem, mistake in MISTAKES:
        path = SOLUTIONS / f"{stem}.ipynb"
        assert path.exists(), f"tests/mistakes/{stem}.py: no notebook {path}"
        nb = _read(path)
        edited = apply_mistake(nb, mistake)
        assert edited != nb
        assert set(mistake.lost) <= set(graded_cells(nb)), (
            f"{mistake.name}: {mistake.lost} are not all graded cells"
        )


def test_mistake_packs_cover_every_mistake_once_and_keep_their_spans_apart():
    """Cheap: the packs (notebook_tools.pack_mistakes) hold each mistake once, `alone` ones alone, at
    most 4, with disjoint spans of cells, and the pack's edits apply together."""
    assert sorted(PACKS) == sorted((stem, m.name) for stem, m in MISTAKES)
    for (stem, name), (student, pack) in PACKS.items():
        assert [m.name for m in pack].count(name) == 1 and all(PACKS[stem, m.name][0] == student for m in pack)
        assert 1 <= len(pack) <= 4 and (len(pack) == 1 or not any(m.alone for m in pack)), (student, pack)
        nb = _read(SOLUTIONS / f"{stem}.ipynb")
        order = {nbgrader_meta(c).get("grade_id"): i for i, c in enumerate(nb.cells)}
        spans = sorted(
            (min(order[c] for c, _, _ in m.edits), max([order[c] for c, _, _ in m.edits] + [order[c] for c in m.lost]))
            for m in pack
        )
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), (student, spans)
        apply_mistakes(nb, pack)


def test_mistake_spec_errors_are_explained():
    nb = _read(NOTEBOOKS[0])
    with pytest.raises(ValueError, match="no cell with grade_id"):
        apply_mistake(nb, Mistake("x", cell="no-such-cell", find="a", replace="b", lost=[]))
    graded_id = next(iter(graded_cells(nb)))
    with pytest.raises(ValueError, match="not a solution cell"):
        apply_mistake(nb, Mistake("x", cell=graded_id, find="a", replace="b", lost=[]))
    with pytest.raises(ValueError, match="use 1-41 characters"):
        Mistake("Bad Name", cell="c", find="a", replace="b", lost=[])
    with pytest.raises(TypeError, match="lost must be a list"):
        Mistake("x", cell="c", find="a", replace="b", lost="cell")


@pytest.mark.slow
def test_in_process_alembic_head_matches_the_alembic_command():
    """autograder.course reads nbgrader's gradebook schema revision in process; the CLI agrees."""
    import subprocess

    from nbgrader.api import _temp_alembic_ini

    with _temp_alembic_ini("sqlite:////tmp/unused-gradebook.db") as ini:
        out = subprocess.check_output([str(Path(sys.executable).parent / "alembic"), "-c", ini, "heads"])
    assert out.decode().split()[0] == course.alembic_head()
