"""One job a workdir: WORKDIR/job.lock names the training job that writes there.

A second job started on the workdir of a running one stops at once, naming it, instead of
writing checkpoints and metrics beside it. The lock is created only where nothing is (O_EXCL on
a local disk; on gs:// an object written with the precondition "no generation yet"), and the
running job rewrites its `alive` time every HEARTBEAT_SECONDS from a background thread.

A job that died leaves its lock behind. It is taken over, with a line saying so, when it is
stale: its process is gone (same host), or it has not been renewed for STALE_SECONDS (any
host, for a job whose machine is gone). `--take_over_workdir` takes over a lock that looks
alive, for when you know its job is gone; taking over is itself conditional on the lock being
the one read, so two jobs taking over at once cannot both win.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax import paths

LOCK_NAME = "job.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


class WorkdirInUse(RuntimeError):
    """Another job holds the workdir."""


def _now() -> float:
    return time.time()


def _describe(holder: dict) -> str:
    started = datetime.datetime.fromtimestamp(holder.get("started", 0), datetime.UTC)
    alive = _now() - holder.get("alive", 0)
    return (f"host {holder.get('host')}, process id {holder.get('pid')}, started "
            f"{started:%Y-%m-%d %H:%M:%S} UTC, last alive {alive:.0f} s ago")


def _process_is_gone(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


class WorkdirLock:
    """Held by process 0 of a job from `acquire` to `release` (every process calls both)."""

    def __init__(self, workdir: str, stale_seconds: float = STALE_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.path = paths.join(workdir, LOCK_NAME)
        self.workdir = workdir
        self.stale_seconds = stale_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.record = {"job": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": _now(), "alive": _now()}
        self._held = False
        self._made_workdir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, take_over: bool = False) -> None:
        """Takes the lock or raises WorkdirInUse naming its holder; all processes agree."""
        error = ""
        if jax.process_index() == 0:
            try:
                self._take(take_over)
            except WorkdirInUse as e:
                error = str(e)
        if jax.process_count() > 1:
            failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
            if failed and not error:
                error = f"{self.workdir} is in use by another job (see process 0's message)."
        if error:
            raise WorkdirInUse(error)
        if jax.process_index() == 0:
            self._held = True
            self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                            name="mmjax-workdir-lock")
            self._thread.start()

    def _take(self, take_over: bool) -> None:
        self._made_workdir = not paths.exists(self.workdir)
        paths.makedirs(self.workdir)
        for _ in range(3):  # another job may take or drop the lock between our reads
            if paths.create_new(self.path, self._payload()):
                return
            try:
                held_text = paths.read_text(self.path)
                holder = json.loads(held_text)
            except FileNotFoundError:
                continue  # released meanwhile
            except (json.JSONDecodeError, UnicodeDecodeError):
                holder, held_text = {}, None
            gone = _process_is_gone(holder)
            stale = _now() - holder.get("alive", 0) > self.stale_seconds
            if not (take_over or gone or stale):
                raise WorkdirInUse(
                    f"{self.workdir} is in use by the job that holds {self.path}: "
                    f"{_describe(holder)}. Stop that job, or use another workdir. If it is gone "
                    f"(its machine lost), its lock is taken over once it is "
                    f"{self.stale_seconds / 60:.0f} minutes old, or at once with "
                    "--take_over_workdir.")
            reason = ("--take_over_workdir" if take_over else
                      "its process is gone" if gone else
                      f"not renewed for {self.stale_seconds:.0f} s")
            if paths.replace_if_unchanged(self.path, held_text, self._payload()):
                print(f"Took over the lock of {self.workdir} from the job of "
                      f"{_describe(holder)} ({reason}).", flush=True)
                return
        raise WorkdirInUse(f"{self.path} kept changing while this job tried to take it: "
                           "another job is starting on this workdir.")

    def _payload(self) -> bytes:
        return json.dumps(self.record, indent=1).encode()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            self.renew()

    def renew(self) -> None:
        """Rewrites the alive time, unless another job has taken the lock (then says so)."""
        previous = self._payload().decode()
        self.record["alive"] = _now()
        try:
            if not paths.replace_if_unchanged(self.path, previous, self._payload()):
                print(f"Warning: {self.path} was taken over by another job; this job goes on "
                      "but no longer holds the workdir.", flush=True)
                self._stop.set()
                self._held = False
        except OSError as e:  # a storage hiccup: the next beat tries again
            print(f"Warning: could not renew {self.path}: {e}", flush=True)

    def release(self) -> None:
        """Drops the lock if this job still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._held:
            paths.replace_if_unchanged(self.path, self._payload().decode(), None)
            self._held = False
            if self._made_workdir:  # a run refused before writing anything leaves no folder
                paths.remove_empty_folder(self.workdir)
