"""``appliance up`` stopping a process that does not stop in time."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from appliance.cli import supervisor

#: a process that ignores SIGTERM and starts another in a session of its own
#: (as RQ's worker runs its work horse), which ignores it too
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1] == "parent":
    subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", ""], start_new_session=True)
time.sleep(120)
"""


def test_a_process_killed_at_the_deadline_takes_what_it_started_in_other_sessions(monkeypatch):
    """A worker killed after the wait left its work horse (a session of its
    own) running, orphaned, against the databases ``up`` then stopped."""
    p = subprocess.Popen([sys.executable, "-c", STUBBORN, "parent", STUBBORN],
                         start_new_session=True)
    started = []
    try:
        deadline = time.monotonic() + 20

        def execed() -> list[psutil.Process]:
            # the child as it runs its own command line: forked, not yet in
            # its own session, it still has the parent's process group
            try:
                return [c for c in psutil.Process(p.pid).children()
                        if c.cmdline()[-2:-1] == ["child"]]
            except psutil.Error:
                return []

        while not execed() and time.monotonic() < deadline:
            time.sleep(0.05)
        (child,) = started[:] = execed()
        assert os.getpgid(child.pid) not in (p.pid, os.getpgid(0))
        monkeypatch.setattr(supervisor, "STOP_WAIT_S", 0.5)
        supervisor._stop_children({"worker": supervisor.Child("worker", proc=p)})
        assert p.poll() is not None
        gone, alive = psutil.wait_procs([child], timeout=5)
        assert not alive, alive
    finally:
        for proc in [p, *started]:
            try:
                proc.kill()
            except (ProcessLookupError, psutil.Error):
                pass
