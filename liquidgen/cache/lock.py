"""One writer per cache: an exclusive lock file naming its holder.

A lock left by a killed run on this host (its pid is gone) is taken over, so a killed encode
resumes by rerunning the same command; a live holder, or one on another host, is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

from liquidgen.errors import LiquidgenError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|part)@(?P<host>[^@]+)@(?P<pid>\d+)(?:-\d+)?$")


def temporary(final: Path, kind: str = "tmp") -> Path:
    """A temporary name beside `final` that says who writes it (host, pid, thread), so that what
    a killed writer leaves is recognised at the next start: `.<name>.<kind>@<host>@<pid>-<tid>`."""
    return final.with_name(f".{final.name}.{kind}@{socket.gethostname()}@{os.getpid()}-{threading.get_ident()}")


def remove_stale(folder: Path) -> int:
    """Delete the temporaries in `folder` whose writer on this host is gone (a kill -9 between
    writing and renaming); those of live writers and of other hosts stay. How many went."""
    host, gone = socket.gethostname(), 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for path in entries:
        m = _TEMP.match(path.name)
        if m and m["host"] == host and not _alive(int(m["pid"])):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            gone += 1
    return gone


HALF_WRITTEN_S = 5.0  # a lock file still empty after this long was left by a killed writer


class CacheLock:
    def __init__(self, root: Path):
        self.path = Path(root) / LOCK
        self.held = False

    def acquire(self) -> "CacheLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if not holder and self._age() > HALF_WRITTEN_S:
                    # empty or unreadable for seconds: its writer was killed between creating and
                    # filling it (a live one fills it at once)
                    self.path.unlink(missing_ok=True)
                    continue
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # stale: its writer was killed
                    continue
                raise LiquidgenError(
                    f"{self.path.parent} is being written by pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('since')}; wait for it, or delete "
                    f"{self.path} if that process is gone"
                ) from None
            except OSError as exc:
                raise LiquidgenError(f"cannot write to {self.path.parent}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise LiquidgenError(f"could not take the lock {self.path}")

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "CacheLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
