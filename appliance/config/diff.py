"""What a reload would change: the diff of two configs, secrets masked, and
the keys that need a restart."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from appliance.config.loader import RESTART_KEYS, SECRET_PATHS, Config


def _flatten(d: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(d, Mapping):
        for k, v in d.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, d


def diff_configs(old: Config | None, new: Config) -> dict[str, Any]:
    """What changes when ``new`` replaces ``old``.

    Returns ``{"symbols_added", "symbols_removed", "schedules_changed",
    "changed", "restart_required"}``: values compared as resolved (a secret
    rotated through the environment is a change) and shown masked; the
    restart-only keys that differ are listed in ``restart_required`` only,
    never in ``changed`` (their old value stays in force until a restart).
    """
    if old is None:
        return {"symbols_added": [s.symbol for s in new.symbols], "symbols_removed": [],
                "schedules_changed": {}, "changed": {}, "restart_required": []}
    o_syms = [s.symbol for s in old.symbols if s.active]
    n_syms = [s.symbol for s in new.symbols if s.active]
    # compared as resolved (a secret rotated in the environment is a change),
    # shown masked (a secret never appears)
    o_raw, n_raw = old.to_dict(), new.to_dict()
    o_m, n_m = old.masked(), new.masked()
    o_flat, n_flat = (dict(_flatten({k: v for k, v in d.items() if k != "symbols"}))
                      for d in (o_raw, n_raw))
    o_shown, n_shown = (dict(_flatten({k: v for k, v in d.items() if k != "symbols"}))
                        for d in (o_m, n_m))
    restart_keys = {tuple(k) for k in RESTART_KEYS}
    changed, restart = {}, []
    for k in sorted(set(o_flat) | set(n_flat), key=lambda t: ".".join(map(str, t))):
        if o_flat.get(k) == n_flat.get(k):
            continue
        if k in restart_keys:
            restart.append(".".join(k))  # not "changed": the old value stays in force
        elif k in SECRET_PATHS:
            changed[".".join(k)] = {  # an empty secret is none: said as empty
                "old": "********" if o_flat.get(k) else "", "new": "********" if n_flat.get(k)
                else "", "secret": True}
        else:
            changed[".".join(k)] = {"old": _jsonable(o_shown.get(k)),
                                    "new": _jsonable(n_shown.get(k))}
    since_changed = {}
    o_spec = {s.symbol: s for s in old.symbols}
    for s in new.symbols:  # a symbol's own since: (history.start's is said once, below)
        o = o_spec.get(s.symbol)
        if o is not None and (o.own_since or s.own_since) and o.since != s.since:
            since_changed[s.symbol] = {"old": o.since.isoformat(), "new": s.since.isoformat()}
    o_tfs = {s.symbol: s.timeframes for s in old.symbols}
    tfs_changed = {s.symbol: {"old": list(o_tfs[s.symbol]), "new": list(s.timeframes)}
                   for s in new.symbols
                   if s.symbol in o_tfs and set(o_tfs[s.symbol]) != set(s.timeframes)}
    # the effective start of each stored resolution (one date, or one per resolution)
    starts = {tf: (old.history_start(tf), new.history_start(tf)) for tf in ("1d", "1m")}
    return {
        "history_start_changed": {tf: {"old": o.isoformat(), "new": n.isoformat()}
                                  for tf, (o, n) in starts.items() if o != n},
        "symbols_timeframes_changed": tfs_changed,
        "symbols_added": [s for s in n_syms if s not in o_syms],
        "symbols_removed": [s for s in o_syms if s not in n_syms],
        "symbols_since_changed": since_changed,
        "schedules_changed": {k[len("schedules."):]: v for k, v in changed.items()
                              if k.startswith("schedules.")},
        "changed": changed,
        "restart_required": restart,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def diff_is_empty(diff: dict[str, Any]) -> bool:
    return not (diff["symbols_added"] or diff["symbols_removed"] or diff["changed"]
                or diff.get("symbols_since_changed") or diff.get("symbols_timeframes_changed"))


def notes(diff: dict[str, Any]) -> list[str]:
    """What a diff's removals do, for the CLI and the console alike: the
    bars of a removed symbol or resolution are kept and still served."""
    out = []
    if diff.get("symbols_removed"):
        out.append(f"symbols removed: {', '.join(diff['symbols_removed'])}: no longer fetched; "
                   f"their data is kept (add them again to fetch them again)")
    dropped = [f"{sym}: {', '.join(sorted(set(c['old']) - set(c['new'])))}"
               for sym, c in (diff.get("symbols_timeframes_changed") or {}).items()
               if set(c["old"]) - set(c["new"])]
    if dropped:
        out.append(f"resolutions removed ({'; '.join(dropped)}): no longer fetched; the bars "
                   f"stored are kept and still served")
    return out
