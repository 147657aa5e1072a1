"""The `agentmem` command: chat, sessions, compact, demo, bench, scenario, profile-heads.

Each command group lives in its own module with an `add_parser(sub)` that registers it
and sets `func`, the function `main` calls with the parsed arguments. Errors agentmem
raises on purpose, bad arguments and common user mistakes (a missing file) print as one
line `agentmem: error: ...` with exit status 2, not a traceback; so do errors of the
system (`OSError`: a full disk, a read-only or missing file, also on stdout); bugs still
raise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import AgentmemError
from . import bench, chat, common, compact, demo, profile, scenario, sessions

__all__ = ["main"]

COMMANDS = (chat, sessions, compact, demo, bench, scenario, profile)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `agentmem: error: <command>: <message>` and exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("agentmem").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"agentmem: error: {where}{message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command registered)."""
    parser = _Parser(
        prog="agentmem",
        description="Keep LLM agents inside a fixed KV-cache budget: chat with a model whose older turns are "
                    "compacted with Attention Matching, inspect stored sessions, run the benchmarks.",
        epilog="`agentmem COMMAND --help` describes each command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO lines (one per compaction)")
    parser.add_argument("--low-memory", action="store_true",
                        help="return freed tensor memory to the OS (glibc): flat RSS over long sessions, ~35%% "
                             "slower turns in the soak benchmark")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                       help="draw progress bars on stderr even when it is not a terminal")
    shown.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                       help="never draw progress bars (default: only when stderr is a terminal)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `agentmem` command with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help (0) or a bad argument (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if args.low_memory:
        _tame_allocator()
    common.configure(progress=args.progress)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a full disk or closed pipe on stdout fails here, not after main returns
        return code
    except AgentmemError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # `agentmem sessions export ID | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # the system refused: a full disk, a missing or read-only file...
        if exc.filename:
            return _fail(f"{exc.strerror or exc}: {exc.filename}")
        where = "cannot write to stdout: " if _stdout_failed() else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print("agentmem: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    """Print `agentmem: error: MESSAGE` as one line (a multi-line message is joined) and return 2."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"agentmem: error: {line}", file=sys.stderr)
    return 2


def _stdout_failed() -> bool:
    """Whether stdout cannot be written (e.g. ENOSPC); if so, point it at /dev/null so the
    interpreter's flush at exit does not fail a second time."""
    try:
        sys.stdout.flush()
        return False
    except OSError:
        pass
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's capture)
        pass
    return True


def _tame_allocator() -> None:
    """Return freed tensor memory to the OS (glibc): long sessions otherwise fragment the heap.

    The same as MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=65536; a no-op elsewhere.
    """
    import ctypes
    import ctypes.util

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: big buffers get their own mapping, freed on release
        libc.mallopt(-1, 65536)  # M_TRIM_THRESHOLD: give back the heap's free top
    except (OSError, AttributeError):
        pass
