"""The package finds its files as package data, and a checkout keeps one copy of each.

No module under ``fusion_ui/`` may reach into the repository through its own ``__file__``
(``Path(__file__).parents[2] / "assets"`` worked in a checkout and failed in a wheel); every
shipped file lives under ``fusion_ui/assets/`` and is found through ``fusion_ui.resources``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fusion_ui"
FILE_RELATIVE = re.compile(r"__file__|\.parents\[|\bparent\.parent\b|os\.path\.dirname\(")


def test_no_module_finds_files_relative_to_its_source() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FILE_RELATIVE.search(line)
    ]
    assert offenders == [], "use fusion_ui.resources (importlib.resources) instead:\n" + "\n".join(offenders)


def test_only_resources_names_the_assets_folder() -> None:
    # A path such as "assets/ui" spelled out elsewhere is a second owner of the layout.
    spelled = re.compile(r"""["']assets["']|["']assets/""")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "resources.py" and spelled.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_readme_paths_exist_in_the_checkout() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"(?<![\w/.])((?:fusion_ui/)?assets/[\w./-]*[\w])", readme))
    assert any(p.endswith("dare_ties.yaml") for p in paths)
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == [], f"README points at paths that are not in the checkout: {missing}"


def test_each_shipped_file_is_in_the_repository_once() -> None:
    shipped = PACKAGE / "assets"
    if not shipped.is_dir():
        pytest.skip("no package data in this tree")
    digests: dict[str, list[str]] = {}
    # Walk the whole checkout without following links: a link (assets/demo) is not a copy.
    for folder, dirs, names in os.walk(ROOT, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in {"build", "dist", "test-artifacts", "bench-data"}
                   and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            if path.is_symlink() or path.stat().st_size < 512:
                continue  # links, and small files that may legitimately repeat (empty __init__.py, configs)
            digests.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(str(path.relative_to(ROOT)))
    # (Inside the family, the experts' identical tokenizer files are each a complete checkpoint's.)
    inside = "fusion_ui/assets/"
    copies = [sorted(p) for p in digests.values()
              if any(x.startswith(inside) for x in p) and not all(x.startswith(inside) for x in p)]
    assert copies == [], f"package data kept twice: {copies}"
