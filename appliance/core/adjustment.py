"""Price adjustment modes: the names a request may give and how the older
``adjusted=true|false`` maps onto them. The factors themselves are computed
in one place, the SQL function ``adjustment_steps`` (migration 0011)."""
from __future__ import annotations

NONE = "none"
SPLITS = "splits"
TOTAL = "total"
#: Every mode, in the order documented.
MODES = (NONE, SPLITS, TOTAL)


class BadMode(ValueError):
    """An adjustment mode that is not one of ``MODES``, or ``adjust`` and
    ``adjusted`` given together with different meanings."""


def mode_of(adjust: str | bool | None) -> str:
    """The mode named by ``adjust`` (a mode name, or a bool as the older
    ``adjusted`` flag: True is ``splits``, False ``none``; None is ``none``).
    Raises BadMode for any other value."""
    if adjust is None or adjust is False:
        return NONE
    if adjust is True:
        return SPLITS
    if adjust in MODES:
        return adjust
    raise BadMode(f"adjust={str(adjust)[:40]!r} must be one of {', '.join(MODES)}")


def resolve(adjust: str | None, adjusted: bool | None) -> str:
    """The mode of a request that may name ``adjust`` (a mode) and/or the
    older ``adjusted`` (an alias: true = splits, false = none). Both given
    must agree; neither gives ``none``."""
    if adjust is None:
        return mode_of(bool(adjusted))
    mode = mode_of(adjust)
    if adjusted is not None and mode_of(bool(adjusted)) != mode:
        raise BadMode(f"adjust={mode} and adjusted={'true' if adjusted else 'false'} "
                      f"disagree: give adjust alone (adjusted=true is adjust=splits)")
    return mode
