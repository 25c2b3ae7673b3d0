"""The wheel holds every package of the source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_in_the_wheel_list() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("chddl_cli", "stages")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
    assert "chddl_configs" in listed


def test_the_project_cites_only_documents_it_ships() -> None:
    import re
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    outside = re.compile(r"(?<![\w/])(DESIGN|REFERENCE)\.md|\.\./shared/(DESIGN|REFERENCE|STYLE)")
    citing = [
        f
        for f in tracked
        if f.endswith((".py", ".md", ".sh", ".yaml", ".toml")) and outside.search((ROOT / f).read_text())
    ]
    assert citing == []
    assert (ROOT / "docs" / "design.md").is_file() and (ROOT / "docs" / "reference.md").is_file()
