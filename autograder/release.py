"""Generate the student release: notebooks/lab0.1/*.ipynb from solutions/lab0.1/*.ipynb.

    python -m autograder.release            # (make release) clean solutions/, regenerate notebooks/
    python -m autograder.release --check    # exit 1 when notebooks/ is not what a release would give

Steps: (1) the solution notebooks are cleaned in place (outputs, execution counts, volatile
metadata; see course.clean_notebook); (2) nbgrader generate_assignment runs with --force and without
a gradebook (the --no-db settings) into a temporary directory: solution regions become stubs that
name their task, hidden tests disappear, test cells are locked and checksummed; (3) the generated
notebooks are cleaned and copied into notebooks/lab0.1/, files no longer in solutions/ are removed.
The result depends only on solutions/, so running it twice changes nothing.

Not done here: distributing the release (students clone the repository or get notebooks/ from the
LMS) or grading (autograder/grade.py, which builds its own gradebook from solutions/).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
import time
from pathlib import Path

from autograder.course import (
    ASSIGNMENT,
    RELEASE_DIR,
    ROOT,
    SOURCE_DIR,
    clean_notebook,
    configure,
    notebooks,
    read_notebook,
    run_nbgrader,
    write_notebook,
)


def clean_sources(root: Path = ROOT) -> list[Path]:
    """Clean every solution notebook in place; returns those whose file changed."""
    return [
        p
        for p in notebooks(root / SOURCE_DIR / ASSIGNMENT)
        if write_notebook(clean_notebook(read_notebook(p)), p)
    ]


def generate_assignment(
    root: Path = ROOT, release_root: Path | None = None, *, with_db: bool = False
) -> Path:
    """nbgrader generate_assignment of root's solutions into <release_root>/lab0.1 (cleaned).

    release_root defaults to root/notebooks. with_db=True also records the assignment, its
    notebooks and cells in root's gradebook (autograde needs that); otherwise no gradebook is touched.
    Returns the generated assignment directory.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    config = configure(root=root)
    if release_root is not None:  # an absolute path: nbgrader joins it to root, which keeps it as is
        config.CourseDirectory.release_directory = str(Path(release_root).resolve())
    if not with_db:
        config.GenerateAssignment.no_database = True
        config.SaveCells.enabled = False
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = ASSIGNMENT
    app = GenerateAssignment(coursedir=coursedir, config=config)
    app.force = True
    run_nbgrader(app, "generate_assignment")
    out = Path(coursedir.format_path(coursedir.release_directory, ".", ASSIGNMENT)).resolve()
    for p in notebooks(out):
        write_notebook(clean_notebook(read_notebook(p)), p)
    return out


def _files(directory: Path) -> dict[str, Path]:
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): p
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".ipynb_checkpoints" not in p.parts and "__pycache__" not in p.parts
    }


def sync(generated: Path, target: Path, *, write: bool = True) -> list[str]:
    """Make target's files equal generated's; returns the changes ('updated X', 'removed Y')."""
    new, old = _files(generated), _files(target)
    changes = []
    for rel, src in new.items():
        if rel not in old or not filecmp.cmp(src, old[rel], shallow=False):
            changes.append(f"{'updated' if rel in old else 'added'} {rel}")
            if write:
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target / rel)
    for rel in old.keys() - new.keys():
        changes.append(f"removed {rel}")
        if write:
            old[rel].unlink()
    return sorted(changes)


def summary(assignment_dir: Path) -> list[str]:
    """One line per notebook: its tasks (solution cells), test cells and points."""
    lines = []
    for p in notebooks(assignment_dir):
        cells = [c.metadata.get("nbgrader", {}) for c in read_notebook(p).cells]
        tasks = sum(1 for m in cells if m.get("solution"))
        graded = [m for m in cells if m.get("grade")]
        points = sum(float(m.get("points", 0)) for m in graded)
        lines.append(f"  {p.name:<40} {tasks:>2} tasks  {len(graded):>2} test cells  {points:>5g} points")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.release", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if notebooks/ is stale")
    opts = parser.parse_args(argv)
    start = time.perf_counter()
    if not notebooks(ROOT / SOURCE_DIR / ASSIGNMENT):
        print(f"no notebooks in {SOURCE_DIR}/{ASSIGNMENT}/; nothing to release", file=sys.stderr)
        return 1
    if not opts.check:
        for p in clean_sources():
            print(f"cleaned {p.relative_to(ROOT)} (outputs, execution counts, volatile metadata)")
    with tempfile.TemporaryDirectory(prefix="labkit-release-") as tmp:
        generated = generate_assignment(ROOT, Path(tmp))
        target = ROOT / RELEASE_DIR / ASSIGNMENT
        changes = sync(generated, target, write=not opts.check)
        lines = summary(generated)
    if opts.check:
        if changes:
            print(f"{RELEASE_DIR}/{ASSIGNMENT} is stale; `make release` would make these changes:")
            print("\n".join(f"  {c}" for c in changes))
            return 1
        print(f"{RELEASE_DIR}/{ASSIGNMENT} is up to date")
        return 0
    print(f"release {RELEASE_DIR}/{ASSIGNMENT}/ ({time.perf_counter() - start:.1f} s):")
    print("\n".join(lines))
    print("\n".join(f"  {c}" for c in changes) if changes else "  (no file changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
