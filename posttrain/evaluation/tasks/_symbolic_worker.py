"""Child side of `posttrain.evaluation.tasks.symbolic`: a zygote that forks comparison workers.

Run as a script (`python _symbolic_worker.py FD`) so it needs nothing from `posttrain`. The zygote
imports sympy and math-verify once, warms them up, reports ready, then forks one worker per
socket the parent hands it (SCM_RIGHTS). A forked worker starts in milliseconds, so the parent
can SIGKILL a stuck one (a power tower like 9^{9^{9^9}} sits in C code that no signal handler
interrupts) and get a fresh one at once.

Wire format on a worker socket: request = 4-byte big-endian length + JSON
``[gold, pred, timeout_s]``; reply = one byte, b"1" (equal) or b"0".
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import struct
import sys

HEADER = struct.Struct(">I")
PID = struct.Struct(">q")
_WARMUP = (
    ("\\frac{1}{2}", "0.5"),
    ("2x-8", "12345.678"),
    ("x^2+2x+1", "(x+1)^2"),
    ("486\\sqrt{3}", "1.5"),
    ("[2,5)", "(1,2)"),
    ("\\{1,2\\}", "2,1"),
    ("x=5", "5"),
    ("10\\%", "0.1"),
    ("\\text{(A)}", "A"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\3\\end{pmatrix}"),
    ("\\pi/2", "90^\\circ"),
)


def _load():
    from math_verify import parse, verify
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    # math-verify warns once that its own (SIGALRM) timeout is off; ours is a hard kill instead.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]

    def equal(gold: str, pred: str) -> bool:
        try:
            g = parse(_as_math(gold), extraction_config=configs, parsing_timeout=None)
            p = parse(_as_math(pred), extraction_config=configs, parsing_timeout=None)
            if not g or not p:
                return False
            return bool(verify(g, p, timeout_seconds=None))
        except Exception:  # any parse/compare failure means "not shown equal", as in the spec
            return False

    return equal


def _as_math(s: str) -> str:
    # A `$` left here delimits math (the parent drops currency dollars first, see
    # `math_answers.without_currency`), so the extractor gets such text as is; anything else is
    # delimited so the LaTeX extractor reads the whole string as one expression.
    return s if "$" in s else "$" + s + "$"


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve(sock: socket.socket, equal) -> None:
    """Answer requests until the parent closes the socket."""
    while True:
        header = recv_exact(sock, HEADER.size)
        if header is None:
            return
        body = recv_exact(sock, HEADER.unpack(header)[0])
        if body is None:
            return
        gold, pred, timeout_s = json.loads(body)
        # Backstop if the parent died without killing us: SIGALRM's default action ends the
        # process even while C code runs.
        signal.alarm(max(1, math.ceil(timeout_s)) + 2)
        result = equal(gold, pred)
        signal.alarm(0)
        sock.sendall(b"1" if result else b"0")


def zygote(control: socket.socket) -> None:
    equal = _load()
    # sympy and math-verify import parts of themselves on first use (seconds on a busy machine);
    # exercise the common answer shapes once so every forked worker starts with them loaded.
    for gold, pred in _WARMUP:
        equal(gold, pred)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished workers
    try:
        control.sendall(b"R")
    except OSError:  # the parent exited (or gave up) before we were ready
        return
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if not msg:
            return
        for fd in fds:
            pid = os.fork()
            if pid == 0:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    serve(socket.socket(fileno=fd), equal)
                finally:
                    os._exit(0)
            os.close(fd)
            try:
                control.sendall(PID.pack(pid))
            except OSError:
                return


if __name__ == "__main__":
    zygote(socket.socket(fileno=int(sys.argv[1])))
