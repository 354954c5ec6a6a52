"""The Makefile's housekeeping targets: the install stamp is keyed on content, `clean` removes what it says."""

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make(cwd: Path, *args: str) -> str:
    return subprocess.run(["make", "-s", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def _copy_project(tmp: Path) -> Path:
    for f in ("Makefile", "lab.mk", "pyproject.toml", "environment.yml"):
        shutil.copy(ROOT / f, tmp / f)
    return tmp


def test_second_run_installs_nothing_and_a_dependency_change_does(tmp_path):
    proj = _copy_project(tmp_path)
    (proj / ".venv" / "bin").mkdir(parents=True)
    key = hashlib.sha256((proj / "pyproject.toml").read_bytes() + (proj / "environment.yml").read_bytes())
    (proj / ".venv" / f".installed-{key.hexdigest()[:16]}").touch()  # what a finished install leaves
    assert "pip install" not in _make(proj, "-n", "venv"), "an up-to-date stamp must skip every install"
    with open(proj / "pyproject.toml", "a") as f:
        f.write("\n# a dependency file changed\n")
    dry = _make(proj, "-n", "venv")
    assert "pip install -q --disable-pip-version-check torch==2.13.0" in dry
    assert dry.index("torch==2.13.0") < dry.index("-e '.[dev]'"), "torch is installed before the package"


def test_clean_removes_the_venv_and_build_leftovers(tmp_path):
    proj = _copy_project(tmp_path)
    for d in (".venv/bin", "build", "labkit.egg-info", ".pytest_cache"):
        (proj / d).mkdir(parents=True)
    _make(proj, "clean")
    assert not any((proj / d).exists() for d in (".venv", "build", "labkit.egg-info", ".pytest_cache"))
    assert (proj / "Makefile").exists()


def test_lint_passes():
    out = subprocess.run(["make", "-s", "lint"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
