"""The appliance's environment: where ``${VAR}`` and ``VAR_FILE`` in
appliance.yaml are resolved, for every process and every command alike."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from appliance.core.errors import ConfigError

ENV_FILE_NAME = "appliance.env"


def env_file_path(config_path: str | os.PathLike[str] | None = None) -> Path:
    """The appliance's environment file: ``$APPLIANCE_ENV_FILE``, else
    ``appliance.env`` beside the config file (systemd's units read the same
    file with ``EnvironmentFile=``)."""
    if os.environ.get("APPLIANCE_ENV_FILE"):
        return Path(os.environ["APPLIANCE_ENV_FILE"])
    base = Path(config_path if config_path is not None
                else os.environ.get("APPLIANCE_CONFIG") or "config/appliance.yaml")
    return base.resolve().parent / ENV_FILE_NAME


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, quotes, ``export`` allowed), as
    systemd's ``EnvironmentFile=`` and shells read them; {} when absent.
    Raises ConfigError when the file exists but cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            values = dotenv_values(stream=f)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}:1: at $: cannot read the appliance's environment file: "
                           f"{getattr(e, 'strerror', None) or e}"]) from None
    return {k: v for k, v in values.items() if v is not None}


def appliance_env(config_path: str | os.PathLike[str] | None = None,
                  base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``${VAR}`` and ``VAR_FILE`` resolve in: this process's
    environment with the environment file over it (read anew on every load,
    so that a value rotated in the file takes effect at the next reload)."""
    env = dict(os.environ if base is None else base)
    env.update(read_env_file(env_file_path(config_path)))
    return env


