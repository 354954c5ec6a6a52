"""Generate the student release: notebooks/lab0.1/*.ipynb from solutions/lab0.1/*.ipynb.

    python -m autograder.release            # (make release) clean solutions/, regenerate notebooks/
    python -m autograder.release --check    # exit 1 when notebooks/ is not what a release would give
    python -m autograder.release --backup   # also when notebooks/ holds edits: copy them to backups/ first
    python -m autograder.release --force    # also when notebooks/ holds edits: overwrite them

Steps: (1) the solution notebooks are cleaned in place (outputs, execution counts, volatile
metadata; see course.clean_notebook); (2) nbgrader generate_assignment runs with --force and without
a gradebook (the --no-db settings) into a temporary directory: solution regions become stubs that
name their task, hidden tests disappear, test cells are locked and checksummed; (3) the generated
notebooks are cleaned, every code cell gets the `raises-exception` tag (see RUN_ALL_TAG), and they are
copied into notebooks/lab0.1/; files no longer in solutions/ are removed. The result depends only on
solutions/, so running it twice changes nothing.

Students work in workspace/ (`make lab` copies the release there; labkit/workspace.py), which a
release never writes. Someone may still have edited notebooks/ itself: before writing, every file the
release would overwrite or remove is compared with the last release written on this machine
(autograder/release-state.json) and with the committed version (git HEAD). A file equal to neither holds
edits nobody released or committed; then nothing is written and the release exits 1 unless told
--backup (the edited files are copied to backups/release-<UTC time>/ first) or --force.

Not done here: distributing the release (students clone the repository or get notebooks/ from the
LMS) or grading (autograder/grade.py, which builds its own gradebook from solutions/).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nbformat.notebooknode import NotebookNode

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
    return [p for p in notebooks(root / SOURCE_DIR / ASSIGNMENT) if write_notebook(clean_notebook(read_notebook(p)), p)]


def generate_assignment(root: Path = ROOT, release_root: Path | None = None, *, with_db: bool = False) -> Path:
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
        write_notebook(tag_for_run_all(clean_notebook(read_notebook(p))), p)
    return out


# JupyterLab's Run All (and nbclient) goes on past a failing cell that carries this tag; the error still
# shows in the cell. In a chapter a student has just started, every stub and every check of an unwritten
# answer fails, and without the tag Run All would stop at the first one, before the chapter's widgets and
# experiments. nbgrader runs every cell regardless (allow_errors) and scores a failing test cell zero.
RUN_ALL_TAG = "raises-exception"


def tag_for_run_all(nb: NotebookNode) -> NotebookNode:
    """Add RUN_ALL_TAG to every code cell of nb (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            tags = cell.metadata.setdefault("tags", [])
            if RUN_ALL_TAG not in tags:
                tags.append(RUN_ALL_TAG)
    return nb


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


STATE = Path("autograder") / "release-state.json"  # sha256 of each file the last release wrote, per path
BACKUPS = Path("backups")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _committed(root: Path, path: Path) -> bytes | None:
    """The file's bytes at git HEAD, or None (no git, not a repository, not committed)."""
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        run = subprocess.run(["git", "-C", str(root), "show", f"HEAD:./{rel}"], capture_output=True, timeout=30)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return run.stdout if run.returncode == 0 else None


def unreleased_edits(generated: Path, target: Path, root: Path = ROOT) -> list[str]:
    """Files of target that a sync would overwrite or remove and that hold edits: equal neither to the
    last release written here (root/STATE) nor to the committed version."""
    state_path = root / STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    new, old = _files(generated), _files(target)
    edited = []
    for rel, path in old.items():
        if rel in new and filecmp.cmp(new[rel], path, shallow=False):
            continue  # the release leaves it as it is
        key = (target / rel).resolve().relative_to(root.resolve()).as_posix()
        if state.get(key) == _sha256(path) or _committed(root, path) == path.read_bytes():
            continue
        edited.append(rel)
    return edited


def record_state(target: Path, root: Path = ROOT) -> None:
    """Remember the sha256 of every file of target as written by this release."""
    state_path = root / STATE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    prefix = target.resolve().relative_to(root.resolve()).as_posix()
    state = {k: v for k, v in state.items() if not k.startswith(prefix + "/")}
    state.update({f"{prefix}/{rel}": _sha256(p) for rel, p in _files(target).items()})
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


def back_up(target: Path, rels: list[str], root: Path = ROOT) -> Path:
    """Copy target/rel for each rel into root/backups/release-<UTC time>/<target's path>/; returns that folder."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = root / BACKUPS / f"release-{stamp}" / target.resolve().relative_to(root.resolve())
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target / rel, dest / rel)
    return dest


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
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--backup", action="store_true", help="copy edited files of notebooks/ to backups/, then release")
    keep.add_argument("--force", action="store_true", help="overwrite edited files of notebooks/ without a copy")
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
        edited = [] if opts.check else unreleased_edits(generated, target)
        if edited and not (opts.backup or opts.force):
            print(f"refusing to release: these files of {RELEASE_DIR}/{ASSIGNMENT}/ hold edits that were neither "
                  "released nor committed, and the release would overwrite or remove them:", file=sys.stderr)
            print("\n".join(f"  {rel}" for rel in edited), file=sys.stderr)
            print("Students work in workspace/ (make lab), never in notebooks/. To keep a copy and release: "
                  "make release RELEASE_ARGS=--backup; to discard the edits: make release RELEASE_ARGS=--force",
                  file=sys.stderr)
            return 1
        if edited and opts.backup:
            print(f"backed up {len(edited)} edited file(s) to {back_up(target, edited).relative_to(ROOT)}/")
        changes = sync(generated, target, write=not opts.check)
        if not opts.check:
            record_state(target)
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
