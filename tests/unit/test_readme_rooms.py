"""README's "Piece | Where" table is the map of the tree: every path and
module it names exists, and every package of ``appliance/`` and every module
in it is on the map."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _where_cells() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| Piece | Where |"):]
    table = table[:table.index("\n\n")]
    return [row.rsplit("|", 2)[1] for row in table.splitlines()[2:]]


def _named() -> tuple[set[Path], list[str]]:
    """The paths the table names, and what it names that does not exist. In
    a cell, `a/folder/` followed by (`x`, `y`) names a/folder/x.py (or the
    package a/folder/x/) and a/folder/y.py."""
    named, missing = set(), []
    for cell in _where_cells():
        folder = None
        for token in re.findall(r"`([^`]+)`", cell):
            if "/" in token or "." in token:
                path = ROOT / token
                folder = path if token.endswith("/") else None
            elif folder is not None:
                path = folder / f"{token}.py"
                if not path.exists():
                    path = folder / token
            else:
                path = ROOT / token
            named.add(path.resolve())
            if not path.exists():
                missing.append(token)
    return named, missing


def test_every_path_the_table_names_exists():
    assert _named()[1] == []


def test_every_package_and_module_of_the_appliance_is_on_the_map():
    named, _ = _named()
    unnamed = []
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        if path.parent == ROOT / "appliance" or "migrations" in path.parts:
            continue
        named_as = path.parent if path.name == "__init__.py" else path
        if named_as.resolve() not in named:
            unnamed.append(named_as.relative_to(ROOT).as_posix())
    assert unnamed == []
