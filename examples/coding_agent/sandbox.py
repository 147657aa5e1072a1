"""How `run_tests` runs code the model wrote: limits everywhere, isolation where the machine has it.

Every command, in every mode:

- gets a scrubbed environment (PATH, LANG, and HOME and TMPDIR in a fresh folder that is
  removed afterwards): no API keys or tokens from the agent's own environment;
- runs under `reaper.py`, which ends the whole process tree when the command exits or
  times out, detached children included, so nothing keeps running or holds the output
  pipe after the call returns;
- has its output capped while it streams: the head and the tail are kept, the middle is
  counted and dropped, so a flood costs no memory.

Isolation is a strategy chosen by `sandbox=`: `Bubblewrap` runs the command in
bubblewrap (no network, a read-only system, only the workspace writable, a private /tmp,
its own pid namespace); `Unconfined` runs it with the user's rights. `"auto"` takes
bubblewrap when it works on this machine and otherwise falls back with one warning;
`"bwrap"` without a working bubblewrap is an error. docs/sandbox.md says what each mode
does and does not promise.
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentmem.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "none")
REAPER = Path(__file__).with_name("reaper.py")
READ_CHUNK = 1 << 16
AFTER_EXIT_SECONDS = 1.0  # how long output may still arrive once the reaper has exited
DOCS = "docs/sandbox.md"


class Sandbox(Protocol):
    """Wraps a command so it runs isolated (or not); `note` says what the caller should know."""

    name: str
    note: str

    def wrap(self, command: Sequence[str], *, root: Path, scratch: Path) -> list[str]:
        """The command line that runs `command` in `root`, with `scratch` as its writable HOME and TMPDIR."""
        ...


@dataclass(frozen=True)
class Unconfined:
    """No isolation: the command can read, write and reach whatever the user can."""

    note: str = ""
    name: str = "none"

    def wrap(self, command: Sequence[str], *, root: Path, scratch: Path) -> list[str]:
        return list(command)


@dataclass(frozen=True)
class Bubblewrap:
    """bubblewrap: read-only system, writable workspace and scratch, private /tmp, no network, own pids."""

    path: str
    note: str = ""
    name: str = "bwrap"

    def wrap(self, command: Sequence[str], *, root: Path, scratch: Path) -> list[str]:
        args = [self.path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                "--tmpfs", "/dev/shm"]
        for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix}):  # a Python under /tmp stays visible
            if Path(prefix).is_relative_to("/tmp"):
                args += ["--ro-bind", prefix, prefix]
        args += ["--bind", str(scratch), str(scratch), "--bind", str(root), str(root),
                 "--unshare-all", "--die-with-parent", "--new-session", "--chdir", str(root)]
        return [*args, "--", *command]


def choose(mode: str | Sandbox) -> Sandbox:
    """The sandbox for `mode`; a `Sandbox` object is kept as is.

    Args:
        mode: "auto" (bubblewrap if it works here, else none with one logged warning and
            a `note`), "bwrap" (a ConfigError when it does not work) or "none".
    """
    if not isinstance(mode, str):
        return mode
    if mode not in MODES:
        raise ConfigError(f"sandbox {mode!r} is not one of {', '.join(MODES)}")
    if mode == "none":
        return Unconfined()
    path = shutil.which("bwrap")
    problem = bwrap_problem(path)
    if problem is None:
        return Bubblewrap(path)
    if mode == "bwrap":
        raise ConfigError(f"sandbox='bwrap' but {problem}; install bubblewrap (e.g. apt-get install bubblewrap), "
                          "allow unprivileged user namespaces, or pass sandbox='none' (see " + DOCS + ")")
    return Unconfined(note=_fallback_note(problem))


@functools.cache
def _fallback_note(problem: str) -> str:
    note = f"not isolated: {problem}, so the tests run with your user's rights (see {DOCS})"
    log.warning("coding agent sandbox: %s", note)  # once per process
    return note


@functools.cache
def bwrap_problem(path: str | None) -> str | None:
    """Why bubblewrap at `path` cannot run a command here (None: it can). Tried once per process."""
    if path is None:
        return "bubblewrap (bwrap) is not installed"
    with tempfile.TemporaryDirectory(prefix="agentmem-probe-") as folder:
        command = Bubblewrap(path).wrap([sys.executable, "-I", "-S", "-c", ""], root=Path(folder),
                                        scratch=Path(folder))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap does not run here ({exc})"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"bwrap does not work here ({said})"
    return None


@dataclass(frozen=True)
class Finished:
    """What a command did: its exit code (None when it timed out) and its capped output."""

    exit_code: int | None
    output: str


def run_command(command: Sequence[str], *, root: Path, sandbox: Sandbox, timeout: float, cap_chars: int,
                env: dict[str, str] | None = None) -> Finished:
    """Run `command` in `root` under `sandbox` with a scrubbed environment, the timeout and the output cap.

    Args:
        command: the program and its arguments.
        root: the folder it runs in (the only one it may change under bubblewrap).
        sandbox: the isolation (see `choose`).
        timeout: seconds before the whole process tree is killed.
        cap_chars: characters of output kept (head and tail).
        env: variables added to the scrubbed environment.
    """
    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="agentmem-run-"))
    try:
        environment = {"PATH": os.environ.get("PATH", os.defpath), "LANG": os.environ.get("LANG", "C.UTF-8"),
                       "HOME": str(scratch), "TMPDIR": str(scratch), **(env or {})}
        argv = [sys.executable, "-I", "-S", str(REAPER), str(os.getpid()),
                *sandbox.wrap(command, root=root, scratch=scratch)]
        process = subprocess.Popen(argv, cwd=root, env=environment, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        output = CappedOutput(cap_chars)
        in_time = False
        try:
            with process.stdout:
                in_time = _pump(process, output, began + timeout)
        finally:  # a timeout, or an interrupt of the agent: end the tree before going on
            if not in_time:
                _stop(process)
            code = process.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Finished(code if in_time else None, output.text())


def _pump(process: subprocess.Popen, output: CappedOutput, deadline: float) -> bool:
    """Read the output until it ends; False when the deadline came first."""
    exited_at = None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > AFTER_EXIT_SECONDS:
                return True  # something outside the reaper's reach holds the pipe: stop reading
            if selector.select(min(deadline - now, 0.2)):
                chunk = os.read(process.stdout.fileno(), READ_CHUNK)
                if not chunk:
                    return True
                output.add(chunk)


def _stop(process: subprocess.Popen) -> None:
    """Timeout: the reaper kills the tree on SIGTERM; if it does not end, kill its group."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


class CappedOutput:
    """A stream's first and last `limit` bytes and how many went by: bounded memory for any flood."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.limit)]

    def text(self) -> str:
        """The output cut to about `limit` characters, keeping its head and its tail."""
        dropped = self.total - len(self.head) - len(self.tail)
        if not dropped:
            return cap((self.head + self.tail).decode("utf-8", errors="replace").strip(), self.limit)
        half = self.limit // 2
        head = self.head.decode("utf-8", errors="replace")[:half]
        tail = self.tail.decode("utf-8", errors="replace")[-half:]
        cut = self.total - len(head.encode()) - len(tail.encode())
        return f"{head}\n... ({cut} bytes cut) ...\n{tail}".strip()


def cap(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, keeping its head and its tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - limit} characters cut) ...\n{text[-half:]}"
