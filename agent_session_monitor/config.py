"""Configuration resolved in one place: a flag, else an environment variable, else the default."""

from __future__ import annotations

import os
from pathlib import Path

from .confine import is_within
from .errors import EXIT_USAGE, MonitorError

ENV_PREFIX = "AGENT_SESSION_MONITOR_"
ENV_DATA_DIR = ENV_PREFIX + "DATA_DIR"
ENV_PRICING = ENV_PREFIX + "PRICING"
ENV_LOG_DIRS = ENV_PREFIX + "LOG_DIRS"
ENV_TOKEN = ENV_PREFIX + "TOKEN"
ENV_LINK_SECRET = ENV_PREFIX + "LINK_SECRET"
ENV_BASE_URL = ENV_PREFIX + "BASE_URL"

DEFAULT_LOG_PATH = "/var/log/higress/access.log"
# Where Higress itself writes when its observability is on.
HIGRESS_LOG_PATH = "/var/log/proxy/access.log"
DEFAULT_DATA_DIR = "./sessions"
DEFAULT_LOG_DIRS = ("/var/log",)


def resolve(flag: object, env_name: str, default: object = None) -> object:
    """The value a user meant: the flag if given, else ``$env_name`` if set, else default."""
    if flag is not None:
        return flag
    value = os.environ.get(env_name)
    if value not in (None, ""):
        return value
    return default


def data_dir(flag: str | None) -> Path:
    return Path(str(resolve(flag, ENV_DATA_DIR, DEFAULT_DATA_DIR)))


def allowed_log_dirs(flags: list[str] | None) -> list[Path]:
    """Directories logs may be read from: the flags, else the environment variable
    (``os.pathsep``-separated), else /var/log and the current directory.

    The monitor is often started by an agent, which can be talked into pointing it at
    /etc/shadow: it only reads below these directories.
    """
    if flags:
        dirs = list(flags)
    elif os.environ.get(ENV_LOG_DIRS):
        dirs = [d for d in os.environ[ENV_LOG_DIRS].split(os.pathsep) if d]
    else:
        dirs = [*DEFAULT_LOG_DIRS, os.getcwd()]
    return [Path(os.path.realpath(d)) for d in dirs]


def check_log_path_allowed(pattern: str, allowed: list[Path]) -> None:
    """Raise unless the directory of ``pattern`` (a path or glob) lies in ``allowed``.

    The check before reading: the fixed directory before the first wildcard, resolved.
    A ``..`` after a wildcard could climb anywhere from wherever the wildcard lands
    (``/var/log/*/../../../etc/shadow``), so it is refused outright. Every file opened
    is checked again by its real path when it is read (confine.py).
    """
    parts = Path(pattern).parts
    fixed = []
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            if ".." in parts[i:]:
                raise MonitorError(f"refusing to read {pattern}: a '..' after a wildcard can "
                                   "lead out of the allowed log directories; write the path "
                                   "without it", EXIT_USAGE)
            break
        fixed.append(part)
    directory = Path(*fixed) if len(fixed) < len(parts) else Path(pattern).parent
    real = Path(os.path.realpath(directory or "."))
    if is_within(str(real), allowed):
        return
    shown = ", ".join(str(a) for a in allowed)
    raise MonitorError(f"refusing to read {pattern}: {real} is not an allowed log directory "
                       f"(allowed: {shown}); add --allow-log-dir {real} or set "
                       f"{ENV_LOG_DIRS} if you mean it", EXIT_USAGE)
