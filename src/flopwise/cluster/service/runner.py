"""The wrapper every job process runs under: `python -m flopwise.cluster.service.runner EXIT_FILE -- ARGV...`.

It starts ARGV (an argument list, never a shell), forwards SIGTERM/SIGINT to it, and when it ends writes its
exit status to EXIT_FILE atomically (a signal N becomes 128 + N, as a shell reports it). The service starts it
in a session of its own, so the job outlives a killed service; a restarted service adopts the process by its
pid and reads the exit file when it is gone: no job is lost or run twice because the service died.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from flopwise.atomic import atomic_write_text


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m flopwise.cluster.service.runner EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"error: cannot start {command[0]!r}: {exc}", file=sys.stderr, flush=True)
        atomic_write_text(exit_file, "127\n")
        return 127

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = exit_status(child.wait())
    atomic_write_text(exit_file, f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
