"""The student bundle: one archive with what a student needs to run the workbook, and nothing else.

    python -m autograder.bundle [--out dist]     (make student-bundle)

writes dist/text-to-tensors-lab0.1-student.tar.gz, one top folder holding

    Makefile, lab.mk, README.md    student/Makefile, lab.mk and student/README.md: `make lab` sets up and
                                   serves workspace/, as in the repository
    pyproject.toml, environment.yml  the pinned environment (the same pins the grader uses)
    labkit/                        the package (sources and data files, no caches)
    notebooks/lab0.1/*.ipynb       a fresh release generated from solutions/ (not a copy of notebooks/,
                                   which could hold someone's edits)

and never solutions/, autograder/, tests/ or any hidden test. The archive is reproducible: sorted
members, fixed times and owners, so the same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
import tempfile
from pathlib import Path

from autograder.course import ASSIGNMENT, RELEASE_DIR, ROOT
from autograder.release import generate_assignment

NAME = f"text-to-tensors-{ASSIGNMENT}-student"
# archive path -> file in the repository
TOP_FILES = {
    "Makefile": "student/Makefile",
    "README.md": "student/README.md",
    "lab.mk": "lab.mk",
    "pyproject.toml": "pyproject.toml",
    "environment.yml": "environment.yml",
}
SKIPPED_PARTS = ("__pycache__", ".ipynb_checkpoints", ".pytest_cache")


def _tree(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part in SKIPPED_PARTS for part in p.parts) and p.suffix != ".pyc"
    )


def members(root: Path = ROOT, release: Path | None = None) -> dict[str, Path]:
    """Archive path (under NAME/) -> source file. release: the generated assignment folder."""
    files = {name: root / src for name, src in TOP_FILES.items()}
    files.update({p.relative_to(root).as_posix(): p for p in _tree(root / "labkit")})
    if release is not None:
        files.update({f"{RELEASE_DIR}/{ASSIGNMENT}/{p.relative_to(release).as_posix()}": p for p in _tree(release)})
    return {f"{NAME}/{k}": v for k, v in sorted(files.items())}


def write_archive(files: dict[str, Path], out: Path) -> Path:
    """A reproducible .tar.gz of files (archive path -> source)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, src in files.items():
            data = src.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(buffer.getvalue())
    return out


def build(out_dir: Path, root: Path = ROOT) -> Path:
    """Generate the release into a temporary folder and write the bundle into out_dir; returns its path."""
    with tempfile.TemporaryDirectory(prefix="labkit-bundle-") as tmp:
        release = generate_assignment(root, Path(tmp))
        return write_archive(members(root, release), out_dir / f"{NAME}.tar.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.bundle", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    opts = parser.parse_args(argv)
    path = build(opts.out)
    with tarfile.open(path) as tar:
        count = len(tar.getmembers())
    print(f"wrote {path} ({count} files, {path.stat().st_size / 1e6:.1f} MB)")
    print("students: tar xzf it, cd into its folder, `make lab`; they hand in workspace/lab0.1/*.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
