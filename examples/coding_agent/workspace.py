"""A workspace the coding agent's tools may touch, and nothing outside it.

Every path a model hands in is resolved against the workspace root and refused if it is
absolute, climbs out with `..`, or leads out through a symlink. Commands run with a
timeout and their output is capped, so a runaway test cannot hang or flood the agent.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agentmem.errors import ConfigError

SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache"}


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
    """

    root: Path
    test_command: tuple[str, ...] = (sys.executable, "-m", "unittest", "-q")
    timeout: float = 60.0
    output_cap: int = 2000
    read_cap: int = 4000
    read_only: tuple[str, ...] = ()  # glob patterns (relative paths) tools may read but not change

    def __post_init__(self) -> None:
        root = Path(self.root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"workspace {self.root} is not a folder; create it or pass another path")
        object.__setattr__(self, "root", root)

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
        """`path` inside the workspace, or WorkspaceError."""
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
        full = (self.root / given).resolve()  # follows symlinks
        if full != self.root and self.root not in full.parents:
            raise WorkspaceError(f"{path} leads outside the workspace (symlink)")
        return full

    def relative(self, full: Path) -> str:
        return full.relative_to(self.root).as_posix() or "."

    # ------------------------------------------------------------------ tools
    def files(self, folder: str = ".") -> list[str]:
        """Paths of the files under `folder`, relative to the root (hidden and cache folders skipped)."""
        base = self.resolve(folder)
        if not base.is_dir():
            raise WorkspaceError(f"{folder} is not a folder")
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            found.extend(self.relative(Path(dirpath) / n) for n in sorted(filenames)
                         if not n.endswith(".pyc") and not n.startswith("."))
        return found

    def list_files(self, folder: str = ".") -> str:
        found = [f"{p} ({(self.root / p).stat().st_size} bytes)" for p in self.files(folder)]
        return "\n".join(found) if found else "(no files)"

    def read_file(self, path: str, start: int = 1, end: int | None = None) -> str:
        full = self.resolve(path)
        if not full.is_file():
            raise WorkspaceError(f"{path} is not a file; list_files shows what exists")
        lines = full.read_text(encoding="utf-8", errors="replace").splitlines()
        start = max(1, int(start))
        end = len(lines) if end is None else min(len(lines), int(end))
        if start > max(end, 1) and lines:
            raise WorkspaceError(f"{path} has {len(lines)} lines; start {start} is past the end")
        text = "\n".join(f"{n:>4} {lines[n - 1]}" for n in range(start, end + 1))
        if len(text) > self.read_cap:
            text = text[: self.read_cap] + f"\n... (cut at {self.read_cap} characters; read a smaller range)"
        return text or "(empty file)"

    def search(self, pattern: str, folder: str = ".") -> str:
        try:
            regex = re.compile(pattern)
        except re.error:
            regex = re.compile(re.escape(pattern))
        base = self.resolve(folder)
        hits = []
        for dirpath, dirnames, filenames in os.walk(base if base.is_dir() else base.parent):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if base.is_file() and full != base:
                    continue
                try:
                    lines = full.read_text(encoding="utf-8").splitlines()
                except (UnicodeDecodeError, OSError):
                    continue
                hits.extend(f"{self.relative(full)}:{n}: {line.strip()}"
                            for n, line in enumerate(lines, 1) if regex.search(line))
        if not hits:
            return f"no match for {pattern!r}"
        shown = hits[:40]
        more = f"\n... and {len(hits) - len(shown)} more" if len(hits) > len(shown) else ""
        return "\n".join(shown) + more

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
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content, encoding="utf-8")
        return f"wrote {self.relative(full)} ({len(content.splitlines())} lines)"

    def patch_file(self, path: str, old: str, new: str) -> str:
        full = self.writable(path)
        if not full.is_file():
            raise WorkspaceError(f"{path} is not a file")
        text = full.read_text(encoding="utf-8")
        count = text.count(old) if old else 0
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            raise WorkspaceError(f"the old text {where} in {path}; copy one exact, unique piece of it")
        full.write_text(text.replace(old, new, 1), encoding="utf-8")
        return f"patched {self.relative(full)}"

    def run_tests(self) -> str:
        return self.run(self.test_command)

    def run(self, command: tuple[str, ...] | list[str]) -> str:
        """Run `command` in the workspace with the timeout; exit code and capped output."""
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(self.root)}
        try:
            done = subprocess.run(list(command), cwd=self.root, capture_output=True, text=True,
                                  timeout=self.timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"timed out after {self.timeout:g}s"
        except FileNotFoundError as exc:
            return f"cannot run {command[0]}: {exc}"
        output = (done.stdout + done.stderr).strip()
        return f"exit code {done.returncode}\n{cap(output, self.output_cap)}"


def cap(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, keeping its head and its tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - limit} characters cut) ...\n{text[-half:]}"
