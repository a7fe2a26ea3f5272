"""Child processes that end with the process that started them (Linux).

A worker killed outright (SIGKILL, the OOM killer) would otherwise leave its
children running unseen: a pg_dump still writing into the backup directory,
RQ's scheduler process still moving jobs."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

#: set while ``forking_children_that_die_with_us`` is active; a child forked
#: meanwhile inherits it as True and arms itself (``os.register_at_fork``)
_ARMED = False


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """This process gets SIGKILL when the thread that forked it ends
    (prctl PR_SET_PDEATHSIG). Used as ``preexec_fn`` and after a fork."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the child outlives us as before
        pass


def _after_fork_in_child() -> None:  # pragma: no cover - runs in the child
    if _ARMED:
        die_with_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def forking_children_that_die_with_us() -> Iterator[None]:
    """``with forking_children_that_die_with_us(): library.start()``: the
    processes forked inside die with this one; those forked elsewhere (RQ's
    work horses, which finish their job) do not."""
    global _ARMED
    _ARMED = True
    try:
        yield
    finally:
        _ARMED = False
