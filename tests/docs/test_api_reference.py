"""The documentation site: it builds with no warning, and every public name of every module
(its `__all__`) is in the API reference."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import prunewise

ROOT = Path(__file__).parents[2]
API = ROOT / "docs" / "api"


def _modules() -> dict[str, list[str]]:
    """Every prunewise module with an `__all__`, and its names."""
    out = {}
    for info in pkgutil.walk_packages(prunewise.__path__, "prunewise."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            out[info.name] = list(module.__all__)
    return out


def test_every_module_that_defines_public_names_has_an_api_entry() -> None:
    directives = {
        m for page in API.glob("*.md") for m in re.findall(r"^::: (\S+)$", page.read_text(), re.M)
    }
    nav = (ROOT / "mkdocs.yml").read_text()
    assert {f"api/{p.name}" for p in API.glob("*.md")} <= set(re.findall(r"api/\S+\.md", nav))
    for name, public in _modules().items():
        module = importlib.import_module(name)
        own = [n for n in public if getattr(getattr(module, n), "__module__", None) == name]
        if own and name != "prunewise":  # the top level: PrunewiseError, from errors
            assert name in directives, f"{name} defines {own[:3]}: add '::: {name}' to docs/api"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_the_site_builds_without_warnings_and_names_every_public_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = set()
    for page in (site / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="(prunewise\.[\w.]+)"', page.read_text()))
    modules = _modules()
    missing = []
    for name, public in modules.items():
        module = importlib.import_module(name)
        for n in public:
            homes = {name, getattr(getattr(module, n), "__module__", name)}
            homes |= {other for other, names in modules.items() if n in names}
            if not any(f"{home}.{n}" in ids for home in homes):
                missing.append(f"{name}.{n}")
    assert not missing, f"{len(missing)} public names not in the API reference: {missing[:8]}"


def test_the_entry_points_docs_architecture_names_import() -> None:
    """Each `name` in the folder table resolves under prunewise.FOLDER (dots: a module)."""
    table = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(\w+)/` \|[^|]*\| (.*) \|$", table, re.M)
    assert len(rows) >= 10
    for folder, names in rows:
        for name in re.findall(r"`([\w.]+)`", names):
            obj = importlib.import_module(f"prunewise.{folder}")
            for part in name.split("."):
                found = getattr(obj, part, None)
                obj = found or importlib.import_module(f"{obj.__name__}.{part}")
            assert callable(obj), f"{folder}/: {name}"
