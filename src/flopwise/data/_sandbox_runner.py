"""Runs inside the sandbox process (started by flopwise.data.sandbox with `python -I -S`).

Order matters: import what we need, enter a new network namespace (needs root), set resource limits,
drop to an unprivileged uid (so RLIMIT_NPROC applies and the file system's permissions hold), install an
audit hook that refuses writes outside the working directory, sockets, signals and ctypes, then run
the code and its tests. Exit status: 0 passed, 1 failed, 3 resource limit, 4 sandbox violation,
5 sandbox setup failed.
"""

import ctypes
import doctest
import errno
import json
import os
import resource
import sys
import traceback
import types
import unittest

CLONE_NEWNET = 0x40000000


class SandboxViolation(PermissionError):
    pass


def main() -> int:
    cfg = json.load(open(sys.argv[1]))
    cwd = os.getcwd()
    code = open("code.py").read()
    tests = open("tests.py").read() if os.path.exists("tests.py") else ""
    libc = ctypes.CDLL(None, use_errno=True)
    if cfg["netns"] and os.geteuid() == 0:
        if libc.unshare(CLONE_NEWNET) != 0:
            print(
                "sandbox: network namespace unavailable; sockets blocked by the audit hook", file=sys.stderr
            )
    lim = cfg["limits"]
    for res, value in (
        (resource.RLIMIT_CPU, lim["cpu_s"]),
        (resource.RLIMIT_AS, lim["memory_bytes"]),
        (resource.RLIMIT_FSIZE, lim["file_bytes"]),
        (resource.RLIMIT_NPROC, lim["max_procs"]),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ):
        hard = value + 1 if res == resource.RLIMIT_CPU else value
        resource.setrlimit(res, (value, hard))
    if os.geteuid() == 0 and cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    if os.geteuid() == 0 and cfg["uid"] is not None:
        return 5

    def inside(path) -> bool:
        try:
            p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/")
        except (TypeError, ValueError):
            return False
        return p == cwd or p.startswith(cwd + os.sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writing = (mode and any(c in mode for c in "wax+")) or (flags or 0) & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT
            )
            if writing and not inside(path):
                raise SandboxViolation(f"sandbox: write outside the working directory: {path}")
        elif event in (
            "os.remove",
            "os.rmdir",
            "os.rename",
            "os.chmod",
            "os.chown",
            "os.mkdir",
            "os.symlink",
            "os.link",
            "os.truncate",
            "os.utime",
            "shutil.rmtree",
        ):
            for a in args:
                if isinstance(a, str | bytes | os.PathLike) and not inside(a):
                    raise SandboxViolation(f"sandbox: {event} outside the working directory: {a}")
        elif event.startswith("socket.") or event in (
            "os.kill",
            "os.killpg",
            "signal.pthread_kill",
            "ctypes.dlopen",
            "ctypes.dlsym",
            "ctypes.cdata",
        ):
            raise SandboxViolation(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)
    mod = types.ModuleType("solution")
    mod.__file__ = os.path.join(cwd, "code.py")
    sys.modules["solution"] = mod
    exec(compile(code, "code.py", "exec"), mod.__dict__)
    if cfg["mode"] == "doctest":
        finder = doctest.DocTestFinder(exclude_empty=True)
        runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
        for test in finder.find(mod, "solution", globs=mod.__dict__):
            runner.run(test, out=lambda s: sys.stderr.write(s[:2000]))
        res = runner.summarize(verbose=False)
        return 0 if res.failed == 0 and res.attempted > 0 else 1
    ns = dict(mod.__dict__)
    exec(compile(tests, "tests.py", "exec"), ns)
    for key, value in list(ns.items()):
        if key.startswith("test") and callable(value) and not isinstance(value, type):
            value()
    cases = [v for v in ns.values() if isinstance(v, type) and issubclass(v, unittest.TestCase)]
    if cases:
        suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(c) for c in cases)
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(suite)
        if not result.wasSuccessful():
            return 1
    return 0


def classify(exc: BaseException) -> int:
    if isinstance(exc, SandboxViolation):
        return 4
    if isinstance(exc, MemoryError | RecursionError):
        return 3
    if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EFBIG, errno.EMFILE, errno.ENOMEM):
        return 3
    ctx = exc.__context__
    if isinstance(ctx, SandboxViolation):
        return 4
    return 1


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as exc:
        status = 0 if exc.code in (0, None) else 1
    except BaseException as exc:  # noqa: BLE001 - everything the tested code raises is a verdict
        status = classify(exc)
        try:
            traceback.print_exception(exc, limit=5, file=sys.stderr)
        except BaseException:  # noqa: BLE001
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
