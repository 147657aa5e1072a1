"""Run a command, then end every process it left behind (a script `sandbox.py` runs).

`python -I -S reaper.py PARENT_PID COMMAND...` makes itself the command's child subreaper
(Linux `prctl(PR_SET_CHILD_SUBREAPER)`): processes that the command starts and orphans,
even detached ones in a session of their own, are re-parented to it instead of to init, so
they stay findable. When the command exits, or on SIGTERM (the caller's timeout), it kills
every process left below it, reaps them and exits with the command's status (128 + N for a
signal N). Without prctl and /proc (macOS) it can only kill the command's process group.

It imports nothing but the standard library and runs with `-I -S`, so a workspace file
named like a standard module (`signal.py`) cannot replace its code.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLEANUP_SECONDS = 5.0  # a fork loop that outruns the killing for this long is left to the caller


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the agent died: clean up as on a timeout
    if os.getppid() != parent:
        return 125  # the caller died before the signal was armed
    ended: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: ended.append(1))
    try:  # posix_spawn, not subprocess: importing subprocess doubles this script's start-up time
        child = os.posix_spawnp(command[0], command, os.environ, setsid=True)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    signal.signal(signal.SIGTERM, lambda *_: _kill(child))
    if ended:
        _kill(child)
    while True:  # reap orphans as they die, until the command itself exits
        done = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if done is not None and done.si_pid == child:
            break
        if done is not None:
            os.waitpid(done.si_pid, 0)
    with contextlib.suppress(OSError):  # the command is a zombie still, so its group id is not reused yet
        os.killpg(child, signal.SIGKILL)
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    _end_descendants()
    return status if status >= 0 else 128 - status


def _end_descendants() -> None:
    """SIGKILL every process below this one until none is left (or CLEANUP_SECONDS pass)."""
    deadline = time.monotonic() + CLEANUP_SECONDS
    while time.monotonic() < deadline:
        left = _descendants(os.getpid())
        if not left:
            return
        for pid in left:
            _kill(pid)
        while True:  # reap the ones that are ours now; killed grandchildren come to us next
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        time.sleep(0.01)


def _descendants(root: int) -> list[int]:
    """Pids below `root`, read from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))  # fields: state, ppid, ...
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(Exception):  # not Linux: only the process group is killed
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
