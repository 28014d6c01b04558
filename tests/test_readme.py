"""The README stays true to the code: every module of the package is in its layout table, and the package is clean
under ruff (configured in pyproject.toml)."""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.conftest import REPO_ROOT


def _layout_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("### Package layout")
    return text[start:text.index("\n## ", start)]


def test_every_package_module_is_in_the_readme_layout():
    named = set()
    for row in _layout_section().splitlines():
        paths = re.findall(r"`(longtail_seg/[\w/]+\.py)`", row)
        if not row.startswith("| `longtail_seg/") or not paths:
            continue
        folder = paths[0].rsplit("/", 1)[0]
        named |= set(paths) | {f"{folder}/{name}" for name in re.findall(r"`(\w+\.py)`", row)}
    modules = {str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "longtail_seg").rglob("*.py")
               if path.name != "__init__.py"}
    assert modules - named == set(), "add these modules to the README's package layout"
    assert named - modules == set(), "the README names modules that do not exist"


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", "."], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
