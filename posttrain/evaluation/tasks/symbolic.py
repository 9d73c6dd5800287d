"""Symbolic equivalence of two answers with a hard timeout that works from any thread.

The spec's scorer guards sympy with SIGALRM, which only works on the main thread and cannot stop
C code (Python integer powers such as ``2^{2^{40}}``). Here each comparison runs in a child
process instead; when it overruns its timeout the child is SIGKILLed and the comparison counts as
"not equal", exactly like a timeout in the spec. Children are forked from a warm zygote
(`_symbolic_worker.py`), so replacing a killed one costs milliseconds.

Time bound: a comparison ends by its timeout (or the caller's `Deadline`, whichever is first),
counting everything it waits for: a free worker, forking a new one, the socket round trip. Only the
zygote's one-time start-up (seconds of imports; `prestart` overlaps it with other work) is not
charged: `equal` waits for it first and moves the caller's deadline by the time waited, so the
first call of a process is not scored "not equal" merely because the checker was still starting.

Equivalence itself is math-verify's (`parse` + `verify`); see docs/EVAL_NOTES.md for how that
differs from sympy's `parse_latex` + `simplify(a - b) == 0`.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.evaluation.tasks import _symbolic_worker as _worker

_HEADER, _PID = _worker.HEADER, _worker.PID
_WORKER_SCRIPT = Path(__file__).with_name("_symbolic_worker.py")

# Longer answers are never real final answers; they only cost parse time.
MAX_SYMBOLIC_CHARS = 1000
DEFAULT_TIMEOUT_S = 1.0
# Callers waiting for a free worker spend their own budget, so the pool should rarely be the
# bottleneck; a forked worker costs little memory (the zygote is ~65 MB, mostly shared).
DEFAULT_MAX_WORKERS = 4


class SymbolicUnavailable(RuntimeError):
    """The comparison process could not be started (math-verify missing, no fork, ...)."""


def _left(end: float) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError("symbolic comparison deadline passed")
    return left


@dataclass
class _Worker:
    pid: int
    sock: socket.socket

    def ask(self, gold: str, pred: str, end: float) -> bool:
        """The worker's verdict, or TimeoutError at `end` (time.monotonic())."""
        body = json.dumps([gold, pred, _left(end)]).encode()
        # One timeout per socket call would let send + receive take twice the time left.
        self.sock.settimeout(_left(end))
        self.sock.sendall(_HEADER.pack(len(body)) + body)
        self.sock.settimeout(_left(end))
        reply = self.sock.recv(1)
        if reply not in (b"0", b"1"):
            raise ConnectionError("symbolic worker closed its socket")
        return reply == b"1"

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self.sock.close()


class SymbolicChecker:
    """A small pool of comparison processes, safe to share between threads."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS, startup_timeout_s: float = 120.0):
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self.startup_timeout_s = startup_timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0
        self._zygote: subprocess.Popen | None = None
        self._launching: socket.socket | None = None  # launched zygote not yet reported ready
        self._control: socket.socket | None = None
        self._spawn_lock = threading.Lock()

    def equal(
        self, gold: str, pred: str, timeout_s: float = DEFAULT_TIMEOUT_S, deadline: Deadline | None = None
    ) -> bool:
        """True when math-verify shows `pred` equals `gold` within `timeout_s` seconds (and before
        `deadline`); returns by then whatever the worker is doing."""
        if timeout_s <= 0 or len(gold) > MAX_SYMBOLIC_CHARS or len(pred) > MAX_SYMBOLIC_CHARS:
            return False
        if deadline is not None and deadline.left() <= 0:
            return False
        waited = self.wait_ready()
        if deadline is not None:
            deadline.extend(waited)
        end = time.monotonic() + timeout_s
        if deadline is not None:
            end = min(end, deadline.end)
        if end <= time.monotonic():
            return False
        worker = self._acquire(end)
        if worker is None:  # no worker free (or forked) in time
            return False
        try:
            result = worker.ask(gold, pred, end)
        except (OSError, ConnectionError):  # timeout, or the worker died: kill and replace it
            self._discard(worker)
            return False
        self._release(worker)
        return result

    def wait_ready(self) -> float:
        """Start the zygote if needed and wait until it can fork workers; the seconds waited.

        Raises SymbolicUnavailable when it does not come up within `startup_timeout_s`.
        """
        if self._control is not None:
            return 0.0
        start = time.monotonic()
        with self._spawn_lock:
            if self._control is None:
                if self._launching is None:
                    self._launch_zygote()
                self._await_zygote()
        return time.monotonic() - start

    def close(self) -> None:
        with self._cond:
            for worker in self._idle:
                worker.kill()
            self._count -= len(self._idle)  # else a reused checker waits for workers that are gone
            self._idle.clear()
        with self._spawn_lock:
            for sock in (self._control, self._launching):
                if sock is not None:
                    sock.close()  # the zygote exits on EOF
            self._control = self._launching = None
            if self._zygote is not None:
                try:
                    self._zygote.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._zygote.kill()
                self._zygote = None

    def _acquire(self, end: float) -> _Worker | None:
        with self._cond:
            while not self._idle and self._count >= self.max_workers:
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            if self._idle:
                return self._idle.pop()
            self._count += 1
        worker = None
        try:
            worker = self._spawn(end)
            return worker
        finally:
            if worker is None:
                with self._cond:
                    self._count -= 1
                    self._cond.notify()

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._idle.append(worker)
            self._cond.notify()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def prestart(self) -> None:
        """Launch the zygote now without waiting for it (it takes seconds to import sympy)."""
        with self._spawn_lock:
            if self._control is None and self._launching is None:
                self._launch_zygote()

    def _spawn(self, end: float) -> _Worker | None:
        """A freshly forked worker, or None when that cannot be done before `end`."""
        left = end - time.monotonic()
        if left <= 0 or not self._spawn_lock.acquire(timeout=left):
            return None
        try:
            if self._control is None:
                # The zygote died since `wait_ready` (or was closed). Restarting takes seconds, so
                # this comparison is lost; the next call's `wait_ready` waits for the new one.
                if self._launching is None:
                    self._launch_zygote()
                return None
            ours, theirs = socket.socketpair()
            try:
                self._control.settimeout(_left(end))
                socket.send_fds(self._control, [b"W"], [theirs.fileno()])
                raw = self._recv_exact(self._control, _PID.size)
            except OSError:  # includes TimeoutError
                raw = None
            finally:
                theirs.close()
            if raw is not None:
                self._control.settimeout(None)
                return _Worker(pid=_PID.unpack(raw)[0], sock=ours)
            ours.close()
            # Dead, or a fork reply still in flight that would answer the next request: either
            # way the control channel is unusable. Relaunch in the background.
            self._reset_zygote()
            self._launch_zygote()
            return None
        finally:
            self._spawn_lock.release()

    def _launch_zygote(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._zygote = subprocess.Popen(
                [sys.executable, str(_WORKER_SCRIPT), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # keep terminal Ctrl-C away from it; it exits on EOF
            )
        finally:
            theirs.close()
        self._launching = ours

    def _await_zygote(self) -> None:
        ours, self._launching = self._launching, None
        ours.settimeout(self.startup_timeout_s)
        try:
            ready = self._recv_exact(ours, 1)
        except OSError:
            ready = None
        ours.settimeout(None)
        if ready != b"R":
            ours.close()
            self._zygote.kill()
            self._zygote.wait()
            self._zygote = None
            raise SymbolicUnavailable(
                f"{_WORKER_SCRIPT.name} did not start within {self.startup_timeout_s:.0f}s "
                "(is math-verify installed?)"
            )
        self._control = ours

    def _reset_zygote(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
            self._zygote = None

    # the worker's own reader: one framing, written once (the worker module imports nothing heavy)
    _recv_exact = staticmethod(_worker.recv_exact)


_default: SymbolicChecker | None = None
_default_lock = threading.Lock()


def default_checker() -> SymbolicChecker:
    global _default
    with _default_lock:
        if _default is None:
            _default = SymbolicChecker()
            atexit.register(_default.close)
        return _default


class Deadline:
    """A time budget shared by all comparisons of one scoring call."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def extend(self, seconds: float) -> None:
        """Leave `seconds` uncharged (the checker's one-time start-up)."""
        self.end += seconds


def symbolic_equal(
    gold: str,
    pred: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    deadline: Deadline | None = None,
    checker: SymbolicChecker | None = None,
) -> bool:
    """math-verify equivalence, False on any error or after `timeout_s` (or the deadline)."""
    return (checker or default_checker()).equal(gold, pred, timeout_s, deadline)
