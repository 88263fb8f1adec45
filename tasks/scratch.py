"""Local scratch folders a killed process does not leak for good. A SIGKILL (an OOM kill, a node's shutdown) skips
every `finally`, so a temporary folder holding a model being trained would stay on the disk forever; each run of
the factory would leave another. So a scratch folder is named after its host and process, and a run starts by
removing the folders of this host's processes that no longer exist."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = "mathfactory-"


def owner() -> str:
    """This process as a folder name's part: host (letters and digits) and pid."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:40] or "host"
    return f"{host}.{os.getpid()}"


def scratch(what: str, folder: str | Path | None = None) -> tempfile.TemporaryDirectory:
    """A temporary folder for `what` (a stage's model, a trainer's rows), removed when the `with` ends, or by a
    later run's sweep if this process is killed first. `folder`: where (default: the system's temporary folder)."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{owner()}-{what}-", dir=folder)


def sweep(folder: str | Path | None = None, prefix: str = PREFIX) -> list[Path]:
    """Remove the folders `{prefix}{host}.{pid}-*` in `folder` whose process, on this host, is gone; those removed.
    A folder of a live process (or of a pid reused since) is kept; so is one another host's process made."""
    host = owner().rsplit(".", 1)[0]
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{prefix}{host}.*-*"):
        pid = path.name[len(prefix) + len(host) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
