"""What the commands that run jobs take from the command line: ``appliance
run``'s ``-p KEY=VALUE``, and the symbols a backfill is given."""
from __future__ import annotations

import inspect
from collections.abc import Iterable

import click

from appliance.config.loader import SYMBOL_RE
from appliance.jobs import registry

#: the parameters given as comma-separated lists
LIST_PARAMS = ("symbols", "timeframes")


def job_params(job: str, params: Iterable[str]) -> dict:
    """``-p KEY=VALUE`` of ``appliance run JOB``: the job's own parameters
    only (an unknown one failed the run with a traceback), ``LIST_PARAMS`` as
    comma-separated lists (``symbols=AAPL`` backfilled A, P and L). Raises
    ValueError saying what is wrong."""
    takes = [n for n, x in inspect.signature(registry.job_function(job)).parameters.items()
             if n not in ("rt", "run_id", "report", "now") and not callable(x.default)]
    kv: dict = {}
    for p in params:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise ValueError(f"--param {p!r}: expected KEY=VALUE")
        if k not in takes:
            raise ValueError(f"--param {k}: {job} takes " + (", ".join(takes) or "no parameter"))
        kv[k] = v
    for k in LIST_PARAMS:
        if k in kv:
            kv[k] = [x for x in kv[k].replace(" ", ",").split(",") if x]
    if bad := [x for x in kv.get("symbols", ()) if not SYMBOL_RE.match(x)]:
        raise ValueError(f"--param symbols: not a valid symbol: {', '.join(bad)} (a "
                         f"comma-separated list: symbols=AAPL,MSFT)")
    return kv


def warn_unconfigured(config_path, rt, symbols: Iterable[str]) -> None:
    """A symbol given that ``symbols:`` lacks (a typo, or on purpose) is
    fetched now and never again by the schedule: said on stderr."""
    if extra := sorted(set(symbols) - {s.symbol for s in rt.config.symbols}):
        click.echo(f"warning: {', '.join(extra)} not in symbols: of {config_path}: "
                   f"fetched this once, not kept up to date", err=True)
