"""Boot code of the sandbox (`evaluation/sandbox.py`): the first thing the sandboxed interpreter
runs, as `python -S -c <this file's text> CONFIG`. It needs nothing from posttrain: it sets the
limits and fences, runs the program, and writes the secret-carrying report when the program ends."""
import json, os, resource, signal, sys, types

class _Timeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _Timeout()

def _user_tasks():
    # RLIMIT_NPROC counts every task (thread) of this user, not only ours.
    uid, n = os.getuid(), 0
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/status" % p) as f:
                fields = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields.get("Threads", "1"))
        except (OSError, KeyError, ValueError, IndexError):
            pass
    return n

def _limits(cfg):
    inf = resource.RLIM_INFINITY
    wanted = dict(cfg["rlimits"])
    if os.geteuid() != 0:  # Linux does not enforce it for root
        wanted["RLIMIT_NPROC"] = _user_tasks() + cfg["max_procs"]
    for name, soft in wanted.items():
        kind = getattr(resource, name)
        hard = soft + 1 if name == "RLIMIT_CPU" else soft  # SIGXCPU first, SIGKILL a second later
        _, cur = resource.getrlimit(kind)
        if cur != inf:
            soft, hard = min(soft, cur), min(hard, cur)
        resource.setrlimit(kind, (soft, hard))

def _unshare():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    newnet, newpid, newuser = 0x40000000, 0x20000000, 0x10000000
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() == 0:
        return libc if libc.unshare(newnet | newpid) == 0 else None
    if libc.unshare(newuser | newnet | newpid) != 0:
        return None
    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
    return libc

def _become_pid1(libc):
    # Only the child enters the new PID namespace (as its PID 1): when it ends, the kernel kills
    # every process it left behind. This process waits and passes its status on.
    pid = os.fork()
    if pid == 0:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the waiting parent
        return
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            pass
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))

def _fence(work, net_and_kill, no_exec):
    root = os.path.realpath(work)
    inet = (-1, 2, 10, 17)  # default (AF_INET), AF_INET, AF_INET6, AF_PACKET
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    my_sid = os.getsid(0)
    path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.truncate": (0,), "os.chmod": (0,),
                   "os.chown": (0,), "os.mkdir": (0,), "os.utime": (0,), "shutil.rmtree": (0,),
                   "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,), "os.chflags": (0,),
                   "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,)}
    spawn = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
             "ctypes.dlsym")
    def inside(path, fd_ok=False):
        if path is None or (fd_ok and isinstance(path, int)):
            return True  # open() of an already open descriptor
        try:
            name = os.readlink("/proc/self/fd/%d" % path) if isinstance(path, int) else os.fsdecode(os.fspath(path))
        except (OSError, TypeError):
            return False
        p = os.path.realpath(name)
        return p == root or p.startswith(root + os.sep) or p == os.devnull
    def refuse(what, path):
        raise PermissionError("sandbox: %s outside the working directory: %r" % (what, path))
    def sid(pid):
        try:
            return os.getsid(pid)
        except OSError:
            return my_sid  # no such process: the call fails by itself
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (flags & write_flags) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            if writing and not inside(path, fd_ok=True):
                refuse("writing", path)
        elif event in path_events:
            for i in path_events[event]:
                if not inside(args[i]):
                    refuse(event, args[i])
        elif event.startswith("gc.get_"):
            raise PermissionError("sandbox: gc object walks are disabled")
        elif no_exec and (event in spawn or (event == "ctypes.dlopen" and args[0] is not None)):
            raise PermissionError("sandbox: %s is disabled" % event)
        elif net_and_kill:
            if event == "socket.__new__" and args[1] in inet:
                raise PermissionError("sandbox: network is disabled")
            if event in ("socket.connect", "socket.sendto", "socket.bind") and args[0].family in inet:
                raise PermissionError("sandbox: network is disabled")
            if event.startswith(("socket.getaddrinfo", "socket.gethostby", "socket.getnameinfo")):
                raise PermissionError("sandbox: network is disabled")
            if event in ("os.kill", "os.killpg") and (args[0] == -1 or (args[0] != 0 and sid(abs(args[0])) != my_sid)):
                raise PermissionError("sandbox: signals to other processes are disabled")
    return hook

def _run(cfg):
    with open(cfg["program"], encoding="utf-8") as f:
        source = f.read()
    module = types.ModuleType(cfg["module"])
    module.__file__ = cfg["program"]
    sys.modules[cfg["module"]] = module
    sys.path.insert(0, cfg["work"])
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGXCPU, _alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, cfg["timeout"])
            exec(compile(source, cfg["program"], "exec"), module.__dict__)
            return "passed", "", ""
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return "timeout", "time-limit", ""
    except BaseException as e:
        try:
            message = str(e)[:1000]
        except BaseException:
            message = ""
        return "failed", type(e).__name__, message

def _main():
    cfg = json.loads(sys.argv[1])
    sys.path.extend(cfg["site_paths"])  # started with -S: site-packages without running .pth files
    secret = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    del sys.argv[1:]
    used = cfg["backend"]
    try:
        _limits(cfg)
        if used == "namespaces":
            libc = _unshare()
            if libc is None:
                used = "process"
            else:
                _become_pid1(libc)
        # The fence applies under bwrap too, so that a score never depends on the backend.
        sys.addaudithook(_fence(cfg["work"], used == "process", not cfg["subprocess"]))
    except Exception as e:
        sys.stderr.write("posttrain-sandbox: setup failed: %r\n" % (e,))
        sys.stderr.flush()
        os._exit(70)
    try:
        status, error, message = _run(cfg)
    except _Timeout:
        status, error, message = "timeout", "time-limit", ""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    line = json.dumps({"nonce": secret, "status": status, "error": error, "message": message, "isolation": used})
    try:
        os.write(cfg["report_fd"], line.encode() + b"\n")
    except OSError:
        pass
    os._exit(0)


if __name__ == "__main__":  # run as `python -c <this file> CONFIG`; importing it runs nothing
    _main()
