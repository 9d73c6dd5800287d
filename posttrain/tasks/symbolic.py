"""Symbolic equivalence of two answers with a hard timeout that works from any thread.

The spec's scorer guards sympy with SIGALRM, which only works on the main thread and cannot stop
C code (Python integer powers such as ``2^{2^{40}}``). Here each comparison runs in a child
process instead; when it overruns its timeout the child is SIGKILLed and the comparison counts as
"not equal", exactly like a timeout in the spec. Children are forked from a warm zygote
(`_symbolic_worker.py`), so replacing a killed one costs milliseconds.

Equivalence itself is math-verify's (`parse` + `verify`); see docs/EVAL_NOTES.md for how that
differs from sympy's `parse_latex` + `simplify(a - b) == 0`.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct(">I")
_PID = struct.Struct(">q")
_WORKER_SCRIPT = Path(__file__).with_name("_symbolic_worker.py")

# Longer answers are never real final answers; they only cost parse time.
MAX_SYMBOLIC_CHARS = 1000
DEFAULT_TIMEOUT_S = 1.0


class SymbolicUnavailable(RuntimeError):
    """The comparison process could not be started (math-verify missing, no fork, ...)."""


@dataclass
class _Worker:
    pid: int
    sock: socket.socket

    def ask(self, gold: str, pred: str, timeout_s: float) -> bool:
        body = json.dumps([gold, pred, timeout_s]).encode()
        self.sock.settimeout(timeout_s)
        self.sock.sendall(_HEADER.pack(len(body)) + body)
        reply = self.sock.recv(1)  # socket.timeout (TimeoutError) when it overruns
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

    def __init__(self, max_workers: int = 2, startup_timeout_s: float = 120.0):
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

    def equal(self, gold: str, pred: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
        """True when math-verify shows `pred` equals `gold` within `timeout_s` seconds."""
        if timeout_s <= 0 or len(gold) > MAX_SYMBOLIC_CHARS or len(pred) > MAX_SYMBOLIC_CHARS:
            return False
        worker = self._acquire()
        try:
            result = worker.ask(gold, pred, timeout_s)
        except (OSError, ConnectionError):  # timeout, or the worker died: kill and replace it
            self._discard(worker)
            return False
        self._release(worker)
        return result

    def close(self) -> None:
        with self._cond:
            for worker in self._idle:
                worker.kill()
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

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= self.max_workers:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return self._spawn()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

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

    def _spawn(self) -> _Worker:
        with self._spawn_lock:
            for _ in range(2):
                if self._control is None:
                    if self._launching is None:
                        self._launch_zygote()
                    self._await_zygote()
                ours, theirs = socket.socketpair()
                try:
                    socket.send_fds(self._control, [b"W"], [theirs.fileno()])
                    raw = self._recv_exact(self._control, _PID.size)
                except OSError:
                    raw = None
                finally:
                    theirs.close()
                if raw is not None:
                    return _Worker(pid=_PID.unpack(raw)[0], sock=ours)
                ours.close()
                self._reset_zygote()  # it died; start a new one once
            raise SymbolicUnavailable("the symbolic comparison zygote keeps dying")

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

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf


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


def symbolic_equal(
    gold: str,
    pred: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    deadline: Deadline | None = None,
    checker: SymbolicChecker | None = None,
) -> bool:
    """math-verify equivalence, False on any error or after `timeout_s` (or the deadline)."""
    if deadline is not None:
        timeout_s = min(timeout_s, deadline.left())
    return (checker or default_checker()).equal(gold, pred, timeout_s)
