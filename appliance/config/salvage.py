"""The connection settings of a config file that does not validate (or does
not even parse as YAML): where its PostgreSQL, Redis and data_dir are, so
that a refused reload can be recorded and the running appliance asked."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from appliance.config.env import appliance_env
from appliance.config.loader import DEFAULTS, Config, _Ctx, _deep_merge, _interpolate, _Loader
from appliance.config.rules import Doc
from appliance.core.errors import ConfigError


def _top_level_blocks(text: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``keys``' values from a file that is not valid YAML as a whole (a
    broken line elsewhere), each top-level block (its ``key:`` line at the
    left margin and the indented lines under it) parsed on its own."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        head = re.match(r"([A-Za-z_][\w-]*)\s*:", line)
        if head:
            current = blocks.setdefault(head.group(1), []) if head.group(1) in keys else None
            if current is not None:
                current.clear()
        elif line[:1] not in (" ", "\t", "#", "") and not line.startswith("-"):
            current = None
        if current is not None:
            current.append(line)
    out: dict[str, Any] = {}
    for key, lines in blocks.items():
        try:
            part = yaml.load("\n".join(lines), Loader=_Loader)
        except Exception:  # noqa: BLE001 - this block is the broken one
            continue
        if isinstance(part, dict) and key in part:
            out[key] = part[key]
    return out


def salvage_connection_settings(path: str | os.PathLike[str],
                                env: Mapping[str, str] | None = None) -> Config:
    """A config holding only the connection settings of a file that does not
    validate: ``database``, ``redis`` and ``data_dir`` as far as they can be
    read (interpolated leniently), defaults for everything else. Used to
    record a refused reload; never for running anything."""
    p = Path(path)
    if env is None:
        try:
            env = appliance_env(p)
        except ConfigError:
            env = os.environ
    picked: Doc = {}
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    try:
        raw = yaml.load(text, Loader=_Loader)
    except Exception:  # noqa: BLE001 - broken YAML: the blocks that still parse
        raw = _top_level_blocks(text, ("database", "redis", "data_dir"))
    if isinstance(raw, dict):
        ctx = _Ctx(str(p), {}, [])
        for key in ("database", "redis", "data_dir"):
            val = raw.get(key)
            if key == "data_dir" and isinstance(val, str):
                picked[key] = _interpolate(val, (key,), env, ctx)
            elif isinstance(val, dict) and isinstance(val.get("url", ""), str):
                picked[key] = {"url": _interpolate(val.get("url", ""), (key, "url"), env, ctx)}
    data = _deep_merge(DEFAULTS, picked)
    d = Path(data["data_dir"]).expanduser()
    data["data_dir"] = str(d if d.is_absolute() else (p.resolve().parent / d))
    return Config(data, path=p.resolve(), text="")
