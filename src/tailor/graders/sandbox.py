"""The pool python graders run through: one fork server (_zygote.py) per pool, started on first
use, and at most `max_concurrent` graders running at once (the rest wait their turn). Each
grader runs in its own freshly forked, confined process (see _confine.py), so nothing one grader
does is seen by the next, whoever sent it. Thread-safe: the server's request threads, an eval
run's workers and a training step's reward calls can all share one pool.

`grade` never raises for anything a grader does: it returns {"reward": x}, {"error": why} (the
grader failed, broke a limit, or returned no number) or {"server_error": why} (the sandbox
itself could not run it)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

MAX_MESSAGE = 16 * 1024 * 1024


@dataclass
class Limits:
    """What one python grader may use (OpenAI's: 2 minutes, 2 GB, code under 256 kB)."""

    wall_seconds: float = 120.0
    """Wall-clock time before the grader is stopped."""
    cpu_seconds: int = 120
    """CPU time before the kernel stops it."""
    memory_mb: int = 2048
    """Address space it may add to the fork server's."""
    max_source_bytes: int = 256 * 1024
    """Largest `source` accepted."""
    max_concurrent: int = 2
    """Graders running at the same time; more wait."""


class PythonPool:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent)
        self._lock = threading.Lock()  # starting/stopping the server, writing requests
        self._proc: subprocess.Popen | None = None
        self._home: str | None = None
        self._futures: dict[int, Future] = {}
        self._next = 0
        self.unavailable: str | None = None  # why this machine cannot run python graders

    def grade(self, source: str, sample: dict, item: dict) -> dict:
        """Run `grade(sample, item)` from `source` in a confined process; see the module doc."""
        with self._slots:
            try:
                future = self._submit({"source": source, "sample": sample, "item": item})
            except _Unavailable as exc:
                return {"server_error": str(exc)}
            return future.result()

    def grade_many(self, jobs: list[tuple[str, dict, dict]]) -> list[dict]:
        """Several graders, up to max_concurrent at a time, results in order."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.limits.max_concurrent) as ex:
            return list(ex.map(lambda job: self.grade(*job), jobs))

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                proc.stdin.close()  # the fork server kills its children and exits
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if self._home:
                shutil.rmtree(self._home, ignore_errors=True)
                self._home = None

    # ---- the fork server ------------------------------------------------------------------

    def _submit(self, request: dict) -> Future:
        lim = self.limits
        data = None
        with self._lock:
            proc = self._running()
            self._next += 1
            request.update(id=self._next, wall_seconds=lim.wall_seconds, cpu_seconds=lim.cpu_seconds,
                           memory_bytes=lim.memory_mb * 1024 * 1024)
            data = json.dumps(request).encode()
            if len(data) > MAX_MESSAGE:
                raise _Unavailable(f"the sample and item are {len(data)} bytes as JSON; at most {MAX_MESSAGE}")
            future: Future = Future()
            self._futures[self._next] = future
            try:
                proc.stdin.write(struct.pack(">I", len(data)) + data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._futures.pop(self._next, None)
                raise _Unavailable("the python grader sandbox stopped; it restarts on the next call") from None
        return future

    def _running(self) -> subprocess.Popen:
        if self.unavailable:
            raise _Unavailable(self.unavailable)
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._home = self._home or tempfile.mkdtemp(prefix="tailor-graders-")
        env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LANG": "C.UTF-8"}
        proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("_zygote.py"))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                cwd=self._home, env=env, start_new_session=True)
        hello = _read(proc.stdout)
        if hello is None or not hello.get("ready"):
            proc.wait()
            self.unavailable = (hello or {}).get("reason") or "the python grader sandbox did not start"
            raise _Unavailable(self.unavailable)
        self._proc = proc
        threading.Thread(target=self._replies, args=(proc,), name="python-graders", daemon=True).start()
        return proc

    def _replies(self, proc: subprocess.Popen) -> None:
        while (reply := _read(proc.stdout)) is not None:
            future = self._futures.pop(reply.pop("id", None), None)
            if future is not None:
                future.set_result(reply)
        with self._lock:  # the server is gone: whoever still waits gets told so
            waiting = [f for i, f in self._futures.items()]
            self._futures.clear()
        for f in waiting:
            f.set_result({"server_error": "the python grader sandbox stopped; it restarts on the next call"})


class _Unavailable(Exception):
    pass


def _read(stream) -> dict | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    n = struct.unpack(">I", head)[0]
    body = stream.read(n)
    return json.loads(body) if len(body) == n else None


_default: PythonPool | None = None
_default_lock = threading.Lock()


def default_pool() -> PythonPool:
    """One pool per process for callers that bring none (tailor eval, library use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PythonPool(Limits(max_concurrent=max(1, (os.cpu_count() or 2) - 1)))
        return _default
