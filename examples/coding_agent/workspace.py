"""A workspace the coding agent's tools may touch, and nothing outside it.

Every path a tool touches goes through one checked resolver: a path a model hands in is
refused if it is absolute outside the root, climbs out with `..`, or leads out through a
symlink, and the files `list_files` and `search` walk are checked the same way (links that
lead out are skipped and named in the result). A file with more than one hard link may be
the same file as one outside the workspace, so the tools neither read nor change it; only
regular files are read (a FIFO would block), and a write puts a new file in place with a
rename, so it never writes through a link. Commands run through `sandbox.run_command`: a
scrubbed environment, a timeout, the whole process tree ended, the output capped while it
streams, and bubblewrap isolation where the machine has it (docs/sandbox.md).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import regex

from agentmem.errors import ConfigError

from .sandbox import Sandbox, cap, choose, run_command

__all__ = ["Workspace", "WorkspaceError", "cap"]

SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache"}
MAX_FILE_BYTES = 4_000_000  # a file the tools read whole; bigger ones are refused, not loaded
MAX_PATTERN = 1000  # characters of a search pattern


class WorkspaceError(ValueError):
    """A tool was asked for something outside the workspace or impossible in it (shown to the model)."""


@dataclass(frozen=True)
class Workspace:
    """The folder an agent works in.

    Args:
        root: the workspace folder (must exist).
        test_command: the command that runs the workspace's tests.
        timeout: seconds a command may run.
        output_cap: characters of command output kept (head and tail).
        read_cap: characters a single read returns at most.
        read_only: glob patterns of files the tools may read but not change (e.g. the tests,
            so an agent cannot make them pass by editing them).
        search_timeout: seconds one `search` may take; the model picks the pattern, and one
            like `(a|aa)+$` backtracks for minutes on a 40-character line.
        sandbox: how commands are isolated: "auto" (bubblewrap when it works on this
            machine, else none with one logged warning, kept in `sandbox.note`), "bwrap"
            (a ConfigError when it does not work) or "none". Becomes the chosen `Sandbox`.
    """

    root: Path
    test_command: tuple[str, ...] = (sys.executable, "-m", "unittest", "-q")
    timeout: float = 60.0
    output_cap: int = 2000
    read_cap: int = 4000
    read_only: tuple[str, ...] = ()  # glob patterns (relative paths) tools may read but not change
    search_timeout: float = 3.0
    sandbox: str | Sandbox = "auto"

    def __post_init__(self) -> None:
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"workspace {self.root} is not a folder; create it or pass another path")
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "sandbox", choose(self.sandbox))

    @classmethod
    def from_template(cls, template: Path, target: Path, **options) -> Workspace:
        """A fresh copy of `template` at `target` (which must not exist or be empty)."""
        target = Path(target)
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{target} exists and is not empty; remove it or choose another --workspace")
        shutil.copytree(template, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return cls(target, **options)

    # ------------------------------------------------------------------ paths
    def resolve(self, path: str) -> Path:
        """`path` inside the workspace with its links followed, or WorkspaceError."""
        if not isinstance(path, str) or not path.strip():
            raise WorkspaceError("give a path relative to the workspace, e.g. 'textstats.py'")
        given = Path(path.strip())
        if given.is_absolute():
            try:
                given = given.resolve().relative_to(self.root)
            except ValueError:
                raise WorkspaceError(f"{path} is outside the workspace; use a relative path") from None
        if ".." in given.parts:
            raise WorkspaceError(f"{path}: '..' is not allowed; paths stay inside the workspace")
        return self._inside(self.root / given, path)

    def _inside(self, full: Path, shown: str) -> Path:
        """`full` with its symlinks followed, or WorkspaceError when they lead out of the root.

        The one check every tool's path goes through: the paths models hand in (`resolve`)
        and the files `list_files` and `search` walk to.
        """
        real = full.resolve()
        if real != self.root and self.root not in real.parents:
            raise WorkspaceError(f"{shown} leads outside the workspace (symlink)")
        return real

    def relative(self, full: Path) -> str:
        return full.relative_to(self.root).as_posix() or "."

    def _walk(self, folder: str) -> tuple[list[tuple[str, Path, int]], list[str]]:
        """The files the tools may read under `folder`, and what was skipped and why.

        Returns:
            (relative path, real path, size) per file, and one note per skipped entry.
        """
        base = self.resolve(folder)
        if not base.is_dir():
            raise WorkspaceError(f"{folder} is not a folder")
        found: list[tuple[str, Path, int]] = []
        skipped: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):  # linked folders are listed, never entered
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in dirnames:
                if (here / name).is_symlink():
                    try:
                        self._inside(here / name, name)
                    except WorkspaceError:
                        skipped.append(f"{self.relative(here / name)} (a link leading outside the workspace)")
            for name in sorted(filenames):
                if name.endswith(".pyc") or name.startswith("."):
                    continue
                relative = self.relative(here / name)
                try:
                    real = self._inside(here / name, name)
                    info = os.stat(real)
                except WorkspaceError:
                    skipped.append(f"{relative} (a link leading outside the workspace)")
                    continue
                except OSError:  # a dangling link, or gone since the listing
                    continue
                reason = _unreadable(info)
                if reason is None:
                    found.append((relative, real, info.st_size))
                else:
                    skipped.append(f"{relative} ({reason})")
        return found, skipped

    # ------------------------------------------------------------------ tools
    def files(self, folder: str = ".") -> list[str]:
        """Paths of the files the tools may read under `folder`, relative to the root.

        Hidden and cache folders are left out, and so are links leading outside the
        workspace, hard-linked files and anything that is not a regular file.
        """
        return [path for path, _, _ in self._walk(folder)[0]]

    def list_files(self, folder: str = ".") -> str:
        found, skipped = self._walk(folder)
        lines = [f"{path} ({size} bytes)" for path, _, size in found] or ["(no files)"]
        return "\n".join(lines + _skip_note(skipped))

    def read_file(self, path: str, start: int = 1, end: int | None = None) -> str:
        lines = self.text(path, errors="replace").splitlines()
        start = max(1, int(start))
        end = len(lines) if end is None else min(len(lines), int(end))
        if start > max(end, 1) and lines:
            raise WorkspaceError(f"{path} has {len(lines)} lines; start {start} is past the end")
        text = "\n".join(f"{n:>4} {lines[n - 1]}" for n in range(start, end + 1))
        if len(text) > self.read_cap:
            text = text[: self.read_cap] + f"\n... (cut at {self.read_cap} characters; read a smaller range)"
        return text or "(empty file)"

    def text(self, path: str, *, errors: str = "strict") -> str:
        """The whole text of a file inside the workspace (UTF-8; `errors` as in `bytes.decode`)."""
        full = self.resolve(path)
        if not full.exists():
            raise WorkspaceError(f"{path} is not a file; list_files shows what exists")
        return _read_text(full, path, errors=errors)

    def search(self, pattern: str, folder: str = ".") -> str:
        """Lines matching `pattern` (a regular expression, or plain text when it is not one).

        The `regex` module runs the pattern, with a deadline that holds inside a single
        match (Python's `re` cannot be interrupted): past `search_timeout` the search stops
        and says so, keeping the lines it found.
        """
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise WorkspaceError(f"give a pattern of 1 to {MAX_PATTERN} characters")
        try:
            compiled = regex.compile(pattern)
        except (regex.error, OverflowError, RecursionError):
            compiled = regex.compile(regex.escape(pattern))
        deadline = time.monotonic() + self.search_timeout
        base = self.resolve(folder)
        if base.is_dir():
            found, skipped = self._walk(folder)
            targets = [(path, real) for path, real, _ in found]
        else:
            targets, skipped = [(self.relative(base), base)], []
        hits: list[str] = []
        stopped: list[str] = []
        for searched, (relative, full) in enumerate(targets):
            try:
                lines = _read_text(full, relative, errors="strict").splitlines()
            except WorkspaceError:
                if base.is_dir():
                    continue  # binary, or changed since the walk: not searched
                raise
            try:
                hits.extend(f"{relative}:{n}: {line.strip()}" for n, line in enumerate(lines, 1)
                            if compiled.search(line, timeout=max(deadline - time.monotonic(), 0.0)))
            except TimeoutError:
                stopped = [f"search stopped after {self.search_timeout:g}s: the pattern {pattern!r} takes too long "
                           f"(in {relative}, {searched} of {len(targets)} files searched). Nested repeats like "
                           "(a+)+ backtrack; search plain text or a simpler pattern"]
                break
        if stopped and not hits:
            raise WorkspaceError(stopped[0])
        shown = hits[:40]
        more = [f"... and {len(hits) - len(shown)} more"] if len(hits) > len(shown) else []
        return "\n".join((shown or [f"no match for {pattern!r}"]) + more + stopped + _skip_note(skipped))

    def is_writable(self, path: str) -> bool:
        """Whether the tools may change `path` (inside the workspace and not read-only)."""
        try:
            self.writable(path)
        except WorkspaceError:
            return False
        return True

    def writable(self, path: str) -> Path:
        """`path` resolved for a change, or WorkspaceError when it is read-only."""
        full = self.resolve(path)
        relative = self.relative(full)
        if any(fnmatch.fnmatch(relative, pattern) for pattern in self.read_only):
            raise WorkspaceError(f"{relative} is read-only in this workspace; change the code, not the tests")
        return full

    def write_file(self, path: str, content: str) -> str:
        full = self.writable(path)
        if full.is_dir():
            raise WorkspaceError(f"{path} is a folder")
        _write_text(full, content, path)
        return f"wrote {self.relative(full)} ({len(content.splitlines())} lines)"

    def patch_file(self, path: str, old: str, new: str) -> str:
        full = self.writable(path)
        if not full.exists():
            raise WorkspaceError(f"{path} is not a file")
        text = _read_text(full, path, errors="strict")
        count = text.count(old) if old else 0
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            raise WorkspaceError(f"the old text {where} in {path}; copy one exact, unique piece of it")
        _write_text(full, text.replace(old, new, 1), path)
        return f"patched {self.relative(full)}"

    def run_tests(self) -> str:
        return self.run(self.test_command)

    def run(self, command: tuple[str, ...] | list[str]) -> str:
        """Run `command` in the workspace (see `sandbox.run_command`); exit code and capped output."""
        if not command:
            raise ConfigError("give a command to run, e.g. ('python', '-m', 'unittest')")
        done = run_command(command, root=self.root, sandbox=self.sandbox, timeout=self.timeout,
                           cap_chars=self.output_cap,
                           env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(self.root)})
        if done.exit_code is None:
            return f"timed out after {self.timeout:g}s" + (f"\n{done.output}" if done.output else "")
        return f"exit code {done.exit_code}\n{done.output}"


def _unreadable(info: os.stat_result) -> str | None:
    """Why the tools must not read or change a file with this stat, or None."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_nlink > 1:  # another name for the same file may sit outside the workspace
        return "a hard link: the same file may be outside the workspace"
    if info.st_size > MAX_FILE_BYTES:
        return f"{info.st_size} bytes, more than the tools read ({MAX_FILE_BYTES})"
    return None


def _check_file(info: os.stat_result, shown: str) -> None:
    reason = _unreadable(info)
    if reason is not None:
        raise WorkspaceError(f"{shown} is {reason}; the tools neither read nor change it")


def _read_text(real: Path, shown: str, *, errors: str = "replace") -> str:
    """The text of the regular, singly linked file `real` (checked on the opened file, not the name)."""
    try:  # O_NOFOLLOW: a link put in its place since it was resolved is not followed;
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO does not block
    except OSError as exc:
        raise WorkspaceError(f"{shown} cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        _check_file(os.fstat(fd), shown)
        data = file.read(MAX_FILE_BYTES + 1)
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError:
        raise WorkspaceError(f"{shown} is not UTF-8 text") from None


def _write_text(real: Path, content: str, shown: str) -> None:
    """Put a new file with `content` at `real` with a rename: never written through a link.

    An existing file keeps its permission bits; a hard-linked one is refused (it may be
    the same file as one outside the workspace, and replacing it would silently split them).
    """
    mode = 0o644
    if os.path.lexists(real):
        info = os.lstat(real)
        _check_file(info, shown)
        mode = stat.S_IMODE(info.st_mode)
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, real)
    except BaseException:
        os.unlink(temporary)
        raise


def _skip_note(skipped: list[str]) -> list[str]:
    if not skipped:
        return []
    return [f"(skipped {len(skipped)}: " + "; ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else "") + ")"]
