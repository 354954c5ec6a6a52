"""A student's work survives: `make lab`'s workspace is seeded once and never overwritten, and `make release`
(and `make test`) never write there; edits found in notebooks/ itself stop a release unless it is told
--backup (a copy is kept) or --force."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit import workspace as ws

ROOT = Path(__file__).resolve().parents[1]
CH1 = "lab0.1/01_text_to_tokens.ipynb"
CH2 = "lab0.1/02_inference_vs_training.ipynb"


def _release(tmp_path: Path) -> Path:
    release = tmp_path / "notebooks"
    for name in ("01.ipynb", "02.ipynb"):
        (release / "lab0.1").mkdir(parents=True, exist_ok=True)
        (release / "lab0.1" / name).write_text(f"release {name}")
    (release / "lab0.1" / ".ipynb_checkpoints").mkdir()
    (release / "lab0.1" / ".ipynb_checkpoints" / "01-checkpoint.ipynb").write_text("not part of the release")
    return release


def test_first_use_copies_the_release_and_a_second_copies_nothing(tmp_path):
    release, workspace = _release(tmp_path), tmp_path / "workspace"
    first = ws.update(release, workspace)
    assert first.added == ["lab0.1/01.ipynb", "lab0.1/02.ipynb"] and first.release_changed == []
    assert (workspace / "lab0.1" / "01.ipynb").read_text() == "release 01.ipynb"
    assert not (workspace / "lab0.1" / ".ipynb_checkpoints").exists()
    assert ws.update(release, workspace).added == []


def test_work_is_never_overwritten_new_chapters_are_added_and_release_changes_reported(tmp_path):
    release, workspace = _release(tmp_path), tmp_path / "workspace"
    ws.update(release, workspace)
    (workspace / "lab0.1" / "01.ipynb").write_text("my answers")
    (workspace / "lab0.1" / "02.ipynb").unlink()  # the student wants a fresh copy of chapter 2
    (release / "lab0.1" / "01.ipynb").write_text("release 01, fixed")
    (release / "lab0.1" / "03.ipynb").write_text("a new chapter")
    done = ws.update(release, workspace)
    assert done.added == ["lab0.1/02.ipynb", "lab0.1/03.ipynb"]
    assert done.release_changed == ["lab0.1/01.ipynb"]
    assert (workspace / "lab0.1" / "01.ipynb").read_text() == "my answers"
    assert (workspace / "lab0.1" / "03.ipynb").read_text() == "a new chapter"


def test_a_missing_release_is_an_error_that_says_where_to_run(tmp_path, capsys):
    assert ws.main(["--release", str(tmp_path / "nope"), "--workspace", str(tmp_path / "w")]) == 1
    assert "run `make lab` from the workbook's root" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# make release and make test in a copy of the project (a git repository, as an instructor's clone is)
# --------------------------------------------------------------------------------------------------


def _run(cwd: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if ok:
        assert run.returncode == 0, f"{' '.join(cmd)}: {run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run


def _copy_project(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files, committed in a fresh repository; .venv linked."""
    files = _run(ROOT, "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false")
    _run(dest, "git", "init", "-q")
    _run(dest, "git", "add", "-A")
    _run(dest, *git, "commit", "-q", "-m", "copy")
    (dest / ".venv").symlink_to(ROOT / ".venv")  # same dependency files, so make installs nothing
    return dest


def _edit_notebook(path: Path, text: str) -> bytes:
    """Append a markdown cell with text (as a student's note or an instructor's fix would); returns the bytes."""
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "markdown", "id": f"edit-{len(nb['cells'])}", "metadata": {}, "source": text})
    path.write_text(json.dumps(nb, indent=1))
    return path.read_bytes()


def _answer_first_task(path: Path) -> bytes:
    """Replace the first stub of a release notebook by an answer, as a student does in JupyterLab."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("solution"))
    source = "".join(cell["source"])
    assert "raise NotImplementedError" in source
    cell["source"] = source.replace("raise NotImplementedError", "pass  # my answer\n    # raise NotImplementedError")
    cell["outputs"], cell["execution_count"] = [], 7
    path.write_text(json.dumps(nb, indent=1))
    return path.read_bytes()


@pytest.mark.slow
def test_make_release_and_make_test_leave_the_workspace_intact(tmp_path):
    proj = _copy_project(tmp_path / "course")
    _run(proj, "make", "-s", "workspace")
    mine = proj / "workspace" / CH1
    answered = _answer_first_task(mine)
    # The instructor fixes chapter 1, so the release really rewrites notebooks/.
    _edit_notebook(proj / "solutions" / CH1, "An instructor's fix.")
    before = (proj / "notebooks" / CH1).read_bytes()
    _run(proj, "make", "-s", "release")
    assert (proj / "notebooks" / CH1).read_bytes() != before, "the release did not rewrite chapter 1"
    # A subset of the suite: the release check and this file's fast tests (the whole suite is ~10 minutes of
    # notebook executions; none of its tests writes outside temporary folders and the release).
    inner = _run(proj, "make", "-s", "test",
                 "PYTEST_ARGS=-q -p no:cacheprovider -m 'not slow' tests/test_workspace.py "
                 "tests/test_readme_commands.py::test_make_release_reports_the_committed_release_up_to_date")
    assert " passed" in inner.stdout and "failed" not in inner.stdout, inner.stdout[-2000:]
    assert mine.read_bytes() == answered, "make release / make test changed the student's notebook"
    again = _run(proj, "make", "-s", "workspace").stdout
    assert mine.read_bytes() == answered
    assert f"the release's {CH1} changed since it was copied" in again


@pytest.mark.slow
def test_make_release_refuses_to_overwrite_edits_in_notebooks_unless_told(tmp_path):
    proj = _copy_project(tmp_path / "course")
    edited = proj / "notebooks" / CH2
    work = _answer_first_task(edited)  # someone worked in notebooks/ itself
    _edit_notebook(proj / "solutions" / CH2, "An instructor's fix.")
    _edit_notebook(proj / "solutions" / CH1, "Another fix.")
    ch1 = (proj / "notebooks" / CH1).read_bytes()

    refused = _run(proj, "make", "-s", "release", ok=False)
    assert refused.returncode != 0
    assert "refusing to release" in refused.stderr and CH2.split("/")[1] in refused.stderr
    assert edited.read_bytes() == work and (proj / "notebooks" / CH1).read_bytes() == ch1, "a refusal writes nothing"

    done = _run(proj, "make", "-s", "release", "RELEASE_ARGS=--backup").stdout
    assert "backed up 1 edited file(s)" in done
    backups = list((proj / "backups").rglob(CH2.split("/")[1]))
    assert len(backups) == 1 and backups[0].read_bytes() == work
    assert edited.read_bytes() != work and (proj / "notebooks" / CH1).read_bytes() != ch1
    assert f"updated {CH1.split('/')[1]}" in done and f"updated {CH2.split('/')[1]}" in done

    # What this release wrote is known (autograder/release-state.json): a second fix releases without a flag,
    # although notebooks/ now differs from the commit.
    _edit_notebook(proj / "solutions" / CH2, "A second fix.")
    _run(proj, "make", "-s", "release")
    # --force overwrites edits without a copy.
    _answer_first_task(edited)
    _edit_notebook(proj / "solutions" / CH2, "A third fix.")
    forced = _run(proj, "make", "-s", "release", "RELEASE_ARGS=--force").stdout
    assert f"updated {CH2.split('/')[1]}" in forced and "backed up" not in forced
    assert len(list((proj / "backups").rglob("*.ipynb"))) == 1
