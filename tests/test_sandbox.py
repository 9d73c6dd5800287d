"""The code sandbox: outcomes, limits, and hostile programs that must not harm the run or the machine.

Every hostile program is bounded by the test itself (the fork bomb forks at most 200 times, the
allocation is one request), so a broken sandbox fails a test instead of taking the machine down.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from posttrain.evaluation.sandbox import Limits, _find_bwrap, isolation, run_many, run_program

FAST = Limits(timeout_s=1.0, grace_s=1.0)
MARKER = "posttrain-sandbox-test-marker"
BACKENDS = ["auto", "process"] + (["bwrap"] if _find_bwrap() else [])


def run(source: str, limits: Limits = FAST, backend: str = "auto", **kw):
    return run_program(source, limits, backend=None if backend == "auto" else backend, **kw)


def marked_processes() -> list[int]:
    """Processes whose argv[0] is MARKER (the hostile programs exec `sleep` under that name)."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.startswith(MARKER.encode()) and state != "Z":
            found.append(int(p))
    return found


def test_isolation_is_reported():
    iso = isolation()
    assert iso.backend in ("bwrap", "namespaces", "process")
    assert iso.network and iso.processes and iso.files


@pytest.mark.parametrize("source, status, error", [
    ("x = 1", "passed", ""),
    ("assert 1 == 2", "failed", "AssertionError"),
    ("def f(:\n    pass", "failed", "SyntaxError"),
    ("raise SystemExit(0)", "failed", "SystemExit"),  # exiting early is not passing
    ("import os\nos._exit(0)", "failed", "exit:0"),
    ("import ctypes\nctypes.string_at(0)", "failed", "signal:SIGSEGV"),  # a real crash
    ("input()", "failed", "EOFError"),  # stdin is at EOF
])
def test_outcomes(source, status, error):
    result = run(source)
    assert (result.status, result.error) == (status, error)
    assert result.passed == (status == "passed")


def test_a_forged_report_does_not_pass():
    forge = ('import os\nfor fd in range(3, 64):\n    try:\n'
             '        os.write(fd, b\'{"status": "passed", "nonce": "guess", "error": ""}\\n\')\n'
             '    except OSError:\n        pass\nos._exit(0)')
    assert run(forge).status == "failed"


def test_output_tails_and_module_name():
    result = run("import sys\nprint('a' * 5000)\nprint('end', __name__)\nsys.stderr.write('oops')",
                 Limits(timeout_s=2, output_chars=100), module="__test__")
    assert result.passed
    assert result.stdout.endswith("end __test__\n") and len(result.stdout) == 100
    assert result.stderr == "oops"


def test_infinite_loop_times_out():
    result = run("x = 0\nwhile True:\n    x += 1")
    assert (result.status, result.error) == ("timeout", "time-limit")
    assert result.wall_s < FAST.timeout_s + FAST.grace_s + 1.0


def test_a_program_that_swallows_the_timeout_is_killed():
    src = "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass"
    result = run(src)
    assert (result.status, result.error) == ("timeout", "wall-limit")
    assert FAST.timeout_s + FAST.grace_s - 0.1 < result.wall_s < FAST.timeout_s + FAST.grace_s + 1.5


def test_ten_gigabytes_are_refused():
    result = run("x = bytearray(10 * 1024 ** 3)\nx[-1] = 1", Limits(timeout_s=5))  # default: 4 GiB
    assert (result.status, result.error) == ("failed", "MemoryError")
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 ** 2))"  # touches up to 512 MiB
    result = run(grow, Limits(timeout_s=5, memory_mb=512))
    assert (result.status, result.error) == ("failed", "MemoryError")


def test_file_size_limit():
    result = run("open('big', 'wb').write(b'x' * (3 * 1024 * 1024))", Limits(timeout_s=5, file_size_mb=1))
    assert (result.status, result.error) == ("failed", "OSError")  # EFBIG: Python ignores SIGXFSZ


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_outside_the_working_directory_are_safe(tmp_path, backend):
    victim_dir = tmp_path / "keep"
    victim_dir.mkdir()
    victim = victim_dir / "data.txt"
    victim.write_text("precious")
    attacks = [f"import os\nos.remove({str(victim)!r})",
               f"import shutil\nshutil.rmtree({str(victim_dir)!r})",
               f"open({str(victim)!r}, 'w').write('gone')",
               f"import os\nos.rename({str(victim)!r}, 'stolen')",
               f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('gone')"]
    results = run_many(attacks, FAST, workers=2, backend=None if backend == "auto" else backend)
    assert [r.status for r in results] == ["failed"] * len(attacks), [r.short() for r in results]
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_subprocess_no_command_can_touch_files(tmp_path, backend):
    victim = tmp_path / "data.txt"
    victim.write_text("precious")
    attacks = [f"import subprocess\nsubprocess.run(['rm', {str(victim)!r}])",
               f"import os\nos.system('rm {victim}')",
               f"import ctypes\nctypes.CDLL(None).unlink({str(victim).encode()!r})",
               f"import os\nif os.fork() == 0:\n    os.execv('/bin/rm', ['rm', {str(victim)!r}])",
               f"import os\nfd = os.open({str(victim)!r}, os.O_RDONLY)\nos.fchmod(fd, 0)"]
    strict = Limits(timeout_s=1.0, grace_s=1.0, allow_subprocess=False)
    results = run_many(attacks, strict, workers=2, backend=None if backend == "auto" else backend)
    assert [r.status for r in results] == ["failed"] * len(attacks), [r.short() for r in results]
    assert victim.read_text() == "precious" and victim.stat().st_mode & 0o777 == 0o644
    assert run("import numpy, json\nprint(json.dumps([1]))", strict, backend=backend).passed


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_network(backend):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        attacks = [f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                   "s.sendall(b'leak')",
                   "import socket\nsocket.getaddrinfo('localhost', 80)\n"
                   "socket.create_connection(('localhost', 80), timeout=1)",
                   "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/', timeout=1)"]
        results = run_many(attacks, FAST, workers=2, backend=None if backend == "auto" else backend)
        assert [r.status for r in results] == ["failed"] * len(attacks), [r.short() for r in results]
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the host's loopback


@pytest.mark.parametrize("backend", BACKENDS)
def test_cannot_signal_the_host_processes(backend):
    # Signal 0 only checks that the target could be signalled: harmless if the sandbox is broken.
    result = run(f"import os\nos.kill({os.getpid()}, 0)", backend=backend)
    assert result.status == "failed"


def test_fork_bomb_is_bounded_and_cleaned_up():
    limits = Limits(timeout_s=3.0, grace_s=1.0, max_procs=32)
    bomb = ("import os\nn = 0\nfor i in range(200):  # the test's own bound\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n"
            f"        os.execv('/bin/sleep', [{MARKER!r}, '30'])\n    n += 1\nprint(n)")
    result = run(bomb, limits)
    assert result.passed, result
    forked = int(result.stdout.split()[-1])
    if isolation().processes.startswith("none"):
        pytest.skip("no process limit on this machine (root without a writable pids cgroup)")
    assert forked < limits.max_procs
    time.sleep(0.1)
    assert marked_processes() == []


def test_a_child_that_leaves_the_session_is_killed():
    iso = isolation()
    if iso.backend == "process" and not iso.pids_cgroup:
        pytest.skip("the process backend without a pids cgroup cannot find a process that left its session")
    escape = f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execv('/bin/sleep', [{MARKER!r}, '30'])"
    assert run(escape).passed
    time.sleep(0.1)
    assert marked_processes() == []


def test_working_directory_is_private_and_deleted():
    result = run("import os, tempfile\nopen('out.txt', 'w').write('ok')\ntempfile.mkstemp()\n"
                 "print(os.getcwd())\nprint(os.environ['HOME'] == os.getcwd(), sorted(os.environ)[:3])")
    assert result.passed, result
    cwd = result.stdout.splitlines()[0]
    assert not os.path.exists(cwd)
    assert "True" in result.stdout.splitlines()[1]


def test_run_many_keeps_order_and_is_deterministic():
    programs = ["print(sorted({'a', 'b'}), list({'x', 'y', 'z', 'w'}))", "assert False", "x = 1", "1 / 0"] * 3
    first = run_many(programs, FAST, workers=2)
    second = run_many(programs, FAST, workers=2)
    assert [r.short() for r in first] == ["passed", "failed:AssertionError", "passed",
                                          "failed:ZeroDivisionError"] * 3
    assert [(r.short(), r.stdout) for r in first] == [(r.short(), r.stdout) for r in second]
    assert len({r.stdout for r in first[::4]}) == 1  # PYTHONHASHSEED=0: same set order every run
    assert run_many([], FAST) == []


def test_another_interpreter():
    other = "/usr/bin/python3"
    if not os.path.exists(other) or os.path.realpath(other) == os.path.realpath(__import__("sys").executable):
        pytest.skip("no second interpreter")
    result = run_program("import sys\nprint(sys.executable)", FAST, python=other)
    assert result.passed and result.stdout.strip() == other


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(max_procs=0)
    with pytest.raises(ValueError):
        run_program("x = 1", FAST, backend="docker")
