"""The writer lock of a store: one writer at a time, on a local disk or on an object store.

Local: a sibling file ``<name>.lock`` created with ``O_CREAT | O_EXCL``, holding the writer's
pid and host; a lock whose process is gone (same host) is taken over.

Object store: a sibling object ``<name>.lock`` created with a *conditional put* (S3
``If-None-Match: *``, through s3fs's ``pipe_file(mode="create")``; GCS's ``ifGenerationMatch=0``
through the same call), so of two writers racing exactly one gets it. It holds the owner
(host, pid, a fresh uuid) and a heartbeat timestamp that a background thread rewrites every
``timeout / 4`` seconds while the command runs. A lock is stale, and taken over (deleted, then
created again conditionally), when its heartbeat is older than ``timeout`` (default 120 s,
``PROBEKIT_LOCK_TIMEOUT``), or at once when its owner is a dead process on this host. Every
heartbeat reads the object first: a writer that finds another owner there (it stalled past
the timeout and was taken over) stops before it marks another block (:meth:`Lock.check`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from probekit.errors import StoreLockedError, UsageError
from probekit.store.location import Location, mtime

DEFAULT_TIMEOUT = 120.0


def timeout_s() -> float:
    try:
        return max(float(os.environ.get("PROBEKIT_LOCK_TIMEOUT", DEFAULT_TIMEOUT)), 0.5)
    except ValueError:
        return DEFAULT_TIMEOUT


def lock_location(store: Location) -> Location:
    return store.sibling(store.name + ".lock")


def pid_alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _locked_error(where: Location, holder: dict, lock: Location) -> StoreLockedError:
    beat = holder.get("heartbeat")
    age = f", last heartbeat {time.time() - beat:,.0f} s ago" if isinstance(beat, (int, float)) else ""
    return StoreLockedError(f"{where} is being written by another process (pid {holder.get('pid')} on "
                            f"{holder.get('host')}{age}); wait for it, or delete {lock} if that process is gone")


class Lock:
    """A held writer lock; :meth:`release` gives it back."""

    def __init__(self, where: Location):
        self.where, self.at = where, lock_location(where)
        self.me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.lost = False
        self._stop = threading.Event()
        self._thread = None

    # -- local ------------------------------------------------------------------

    def _acquire_local(self) -> None:
        path = self.at.path
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = self._read()
                if holder.get("host") == self.me["host"] and not pid_alive(holder.get("pid")):
                    path.unlink(missing_ok=True)  # stale: its writer died
                    continue
                raise _locked_error(self.where, holder, path) from None
        else:  # pragma: no cover - lost a race twice
            raise StoreLockedError(f"could not lock {self.where}")
        with os.fdopen(fd, "w") as f:
            json.dump(self.me, f)

    # -- object store -------------------------------------------------------------

    def _payload(self) -> bytes:
        return json.dumps({**self.me, "heartbeat": time.time()}).encode()

    def _create(self) -> None:
        fs, key = self.at.fs, self.at.root
        try:
            fs.pipe_file(key, self._payload(), mode="create")
        except TypeError:  # a backend whose pipe_file has no mode: its exclusive open
            try:
                with fs.open(key, "xb") as f:
                    f.write(self._payload())
            except (ValueError, NotImplementedError):
                raise UsageError(f"{self.at}: this storage backend has no exclusive create, which the writer "
                                 "lock needs") from None
        self.at.refresh()

    def _stale(self, holder: dict) -> bool:
        limit = timeout_s()
        if holder.get("host") == self.me["host"] and holder.get("pid") != self.me["pid"] \
                and not pid_alive(holder.get("pid")):
            return True
        beat = holder.get("heartbeat")
        if not isinstance(beat, (int, float)):  # unreadable: judge by the object's own age
            try:
                beat = mtime(self.at.fs.info(self.at.root))
            except FileNotFoundError:
                return True
        return time.time() - beat > limit

    def _acquire_remote(self) -> None:
        self.me["uuid"] = uuid.uuid4().hex
        for _ in range(3):
            try:
                self._create()
                break
            except FileExistsError:
                holder = self._read()
                if not self._stale(holder):
                    raise _locked_error(self.where, holder, self.at) from None
                self.at.remove()  # stale: taken over
        else:
            raise StoreLockedError(f"could not lock {self.where}: other writers raced for it; try again")
        if self._read().get("uuid") != self.me["uuid"]:  # a racing takeover deleted ours
            raise _locked_error(self.where, self._read(), self.at)
        self._thread = threading.Thread(target=self._beat, name="probekit-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(timeout_s() / 4):
            try:
                if self._read().get("uuid") != self.me["uuid"]:
                    self.lost = True
                    return
                self.at.fs.pipe_file(self.at.root, self._payload())
            except Exception:  # noqa: BLE001 - a failed beat is retried at the next one
                continue

    # -- both ---------------------------------------------------------------------

    def _read(self) -> dict:
        try:
            self.at.refresh()
            out = json.loads(self.at.path.read_text() if not self.at.remote else self.at.fs.cat_file(self.at.root))
            return out if isinstance(out, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "Lock":
        (self._acquire_remote if self.where.remote else self._acquire_local)()
        return self

    def check(self) -> None:
        """Raise :class:`StoreLockedError` if another writer has taken this lock over."""
        if self.lost:
            raise StoreLockedError(f"{self.where}: the writer lock was taken over by another process (this one "
                                   f"missed heartbeats for over {timeout_s():.0f} s); stopping before writing more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.where.remote:
            self.at.path.unlink(missing_ok=True)
        elif not self.lost and self._read().get("uuid") == self.me.get("uuid"):
            self.at.remove()
