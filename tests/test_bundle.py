"""`make student-bundle`: the archive holds the release, labkit, the environment files, the student README and
Makefile, and nothing of the instructor's; unpacked elsewhere, its `make lab` sets up and serves the workbook."""

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

# GPU machines may have only the runtime dependencies: skip (with this reason), do not fail collection
pytest.importorskip("nbformat", reason="needs the dev extras: pip install -e '.[dev]'")
from lab_server import make_server  # noqa: E402

from autograder.bundle import NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(["make", "-s", "student-bundle", f"BUNDLE_ARGS=--out {out}"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (archive,) = out.glob("*.tar.gz")
    assert archive.name == f"{NAME}.tar.gz" and str(archive) in run.stdout
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out / NAME


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tracked(folder: str) -> set[str]:
    run = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    return {line for line in run.stdout.splitlines() if (ROOT / line).is_file()}


@pytest.mark.slow
def test_the_bundle_holds_what_a_student_needs_and_nothing_of_the_instructor(bundle):
    top = {p.name for p in bundle.iterdir()}
    assert top == {"Makefile", "lab.mk", "README.md", "pyproject.toml", "environment.yml", "labkit", "notebooks"}
    assert (bundle / "Makefile").read_bytes() == (ROOT / "student" / "Makefile").read_bytes()
    assert (bundle / "README.md").read_bytes() == (ROOT / "student" / "README.md").read_bytes()
    for same in ("lab.mk", "pyproject.toml", "environment.yml"):
        assert (bundle / same).read_bytes() == (ROOT / same).read_bytes(), same
    # the committed release (tests/test_readme_commands.py checks it is what a release gives)
    assert _files(bundle / "notebooks") == _files(ROOT / "notebooks")
    assert {f"labkit/{rel}" for rel in _files(bundle / "labkit")} >= _tracked("labkit")
    assert not [p for p in bundle.rglob("*") if p.name in ("__pycache__", ".ipynb_checkpoints") or p.suffix == ".pyc"]
    for rel, data in _files(bundle).items():
        for secret in (b"BEGIN SOLUTION", b"BEGIN HIDDEN TESTS", b"END HIDDEN TESTS"):
            assert secret not in data, f"{rel} holds {secret!r}"


@pytest.mark.slow
def test_make_lab_in_the_unpacked_bundle_sets_up_and_serves_the_workspace(bundle):
    dry = subprocess.run(["make", "-n", "lab"], cwd=bundle, capture_output=True, text=True, check=True).stdout
    for step in ("-m venv .venv", "pip install -q --disable-pip-version-check torch==2.13.0", "-e '.[dev]'",
                 "-m labkit.assets fetch", "-m labkit.workspace --release notebooks --workspace workspace",
                 "jupyter lab", "--ServerApp.root_dir=workspace"):
        assert step in dry, f"`make lab` in the bundle lacks {step!r}:\n{dry}"
    # Installing a fresh .venv costs minutes of downloads; the bundle's dependency files are the repository's,
    # so its make finds the repository's install stamp and installs nothing. PYTHONPATH puts the bundle's
    # labkit first, so the workspace tool and the kernels run the bundle's copy.
    (bundle / ".venv").symlink_to(ROOT / ".venv")
    env = {"PYTHONPATH": str(bundle)}
    try:
        probe = "import labkit, labkit.grading, labkit.tokenizer, labkit.viz.tokens; print(labkit.__file__)"
        where = subprocess.run([str(bundle / ".venv/bin/python"), "-c", probe], cwd=bundle,
                               env={**os.environ, **env}, capture_output=True, text=True, check=True)
        assert where.stdout.strip() == str(bundle / "labkit" / "__init__.py")
        with make_server("lab", cwd=bundle, env=env) as server:
            assert server.names() == {"lab0.1"}
            assert server.names("lab0.1") == {p.name for p in (bundle / "notebooks" / "lab0.1").glob("*.ipynb")}
        assert _files(bundle / "workspace" / "lab0.1") == _files(bundle / "notebooks" / "lab0.1")
    finally:
        (bundle / ".venv").unlink()
