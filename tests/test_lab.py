"""The make targets that start JupyterLab, each started headless, asked what it serves, and stopped:
`make lab` (the student's workspace), `make lab-solutions` and `make formgrader` (the instructor's)."""

import json
import shutil

import pytest
from lab_server import ROOT, make_server

RELEASE = ROOT / "notebooks" / "lab0.1"


def _release_names() -> set[str]:
    return {p.name for p in RELEASE.iterdir() if not p.name.startswith(".")}


@pytest.mark.slow
def test_make_lab_serves_the_workspace_seeded_from_the_release_and_keeps_existing_work(tmp_path):
    """A workspace that already holds the student's chapter 1 gets the other chapters; chapter 1 stays."""
    workspace = tmp_path / "workspace"
    mine = workspace / "lab0.1" / "01_text_to_tokens.ipynb"
    mine.parent.mkdir(parents=True)
    nb = json.loads((RELEASE / mine.name).read_text())
    nb["cells"].append({"cell_type": "markdown", "id": "my-notes", "metadata": {}, "source": "my notes"})
    mine.write_text(json.dumps(nb))
    before = mine.read_bytes()
    with make_server("lab", variables={"WORKSPACE": str(workspace)}) as server:
        assert server.names() == {"lab0.1"}, "the server's root is not the workspace"
        assert server.names("lab0.1") == _release_names()
        _, body = server.get("/api/contents/lab0.1/01_text_to_tokens.ipynb")
        assert json.loads(body)["content"]["cells"][-1]["source"] == "my notes", "the server shows the student's copy"
        log = server.log()
    assert mine.read_bytes() == before, "make lab overwrote the student's notebook"
    others = {p.name for p in RELEASE.glob("*.ipynb")} - {mine.name}
    for name in others:
        assert (workspace / "lab0.1" / name).read_bytes() == (RELEASE / name).read_bytes(), f"{name} not seeded"
    copied = {line.strip() for line in log.splitlines() if line.startswith("  lab0.1/")}
    assert copied == {f"lab0.1/{name}" for name in others}, log


@pytest.mark.slow
def test_make_lab_solutions_serves_the_instructor_notebooks():
    with make_server("lab-solutions") as server:
        assert server.names() == {"lab0.1"}
        assert server.names("lab0.1") == {p.name for p in (ROOT / "solutions" / "lab0.1").glob("*.ipynb")}


@pytest.mark.slow
def test_make_formgrader_shows_this_course_from_any_directory(tmp_path):
    """Started from a directory without nbgrader_config.py, formgrader still finds the course and lab0.1."""
    gradebook = ROOT / "autograder" / "gradebook.db"
    saved = tmp_path / "gradebook.db"
    if gradebook.exists():
        shutil.copy2(gradebook, saved)
    try:
        with make_server("formgrader", cwd=tmp_path, makefile_dir=ROOT) as server:
            _, body = server.get("/formgrader/api/assignments")
            _, page = server.get("/formgrader")
    finally:  # formgrader creates the gradebook when it is missing; leave the instructor's as it was
        if saved.exists():
            shutil.copy2(saved, gradebook)
        else:
            gradebook.unlink(missing_ok=True)
    assignments = {a["name"]: a for a in json.loads(body)}
    assert set(assignments) == {"lab0.1"}, assignments
    assert assignments["lab0.1"]["source_path"], assignments["lab0.1"]
    assert b"nbgrader" in page.lower() or b"formgrade" in page.lower()
