"""pyproject.toml as pip reads it: extras are lists of requirements, and every extra the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 685


def _extras() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_extra_is_a_list_of_requirements():
    # An unquoted key such as qwen-coder-1.5b is a dotted TOML key (a table), which pip
    # refuses when it builds the package; the tests import from source and would not notice.
    extras = _extras()
    for name, requirements in extras.items():
        assert isinstance(requirements, list) and all(isinstance(r, str) for r in requirements), name


def test_extras_named_in_docs_and_install_hints_exist():
    extras = {_normal(n) for n in _extras()}
    named = set()
    for path in (ROOT / "README.md", ROOT / "agentmem" / "loading.py"):
        for group in re.findall(r"(?:agentmem|\.)\[([\w.,-]+)\]", path.read_text()):  # agentmem[x] and -e '.[x,y]'
            named |= {_normal(n) for n in group.split(",")}
    assert {"dev", "gemma", "qwen-coder", "qwen-coder-1-5b"} <= named
    assert named <= extras, named - extras
