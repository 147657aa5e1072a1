"""The coding agent's tools: thin, documented wrappers over one `Workspace`.

Each tool's JSON schema comes from its type hints and docstring (`agentmem.agents.tool`).
A `WorkspaceError` raised here (a path outside the workspace, a missing file, a patch that
does not apply) goes back to the model as an observation, not as a crash.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import regex

from agentmem.agents import FunctionTool, tool

from .workspace import Workspace, WorkspaceError


class RepeatGuard:
    """Refuses a call identical to an earlier one while nothing it shows changed since: small models loop.

    A read of a file is refused while that file is unchanged since the call was made (its
    content is above, in the conversation, however the memory holds it); any other call
    while no file changed at all. It also knows when a tool has nothing new to give
    (`exhausted`), which the coding agent uses to narrow the tools a reply may call.
    """

    def __init__(self, files: Sequence[str] = ()) -> None:
        self.version = 0  # bumped by every successful write or patch
        self.files = set(files)
        self.seen: set[tuple[str, str, Any]] = set()
        self.subjects: dict[str, set[str]] = {}  # tool -> what it looked at since the last change
        self.resting: set[str] = set()  # tools whose last call was a refused repeat
        self.last_failed: str | None = None  # the tool that failed most recently
        self.file_versions: dict[str, int] = {}  # path -> changes made to it
        self.read_versions: dict[str, int] = {}  # path -> its version when read_file last showed it

    @property
    def read(self) -> set[str]:
        """Files read_file has shown (patch_file changes only these)."""
        return set(self.read_versions)

    def unread(self) -> set[str]:
        """The known files not shown since they last changed."""
        return {f for f in self.files if self.read_versions.get(f) != self.file_versions.get(f, 0)}

    def check(self, name: str, arguments: dict[str, Any], subject: str = "", *, file: str | None = None) -> None:
        """Refuse a repeat; `file`: the call reads that file, so it is a repeat only while the file is unchanged."""
        version = self.version if file is None else ("file", self.file_versions.get(file, 0))
        key = (name, json.dumps(arguments, sort_keys=True), version)
        if key in self.seen:
            self.rest(name)
            since = f"{file} has not changed" if file is not None else "no file changed"
            raise WorkspaceError(f"you already called {name} with these arguments and {since} since; "
                                 "its output is above. Try another tool or other arguments")
        self.seen.add(key)
        self.resting.clear()
        self.subjects.setdefault(name, set()).add(subject)
        if file is not None:
            self.read_versions[file] = self.file_versions.get(file, 0)

    def rest(self, name: str) -> None:
        """`name` just failed: leave it out until another call goes through."""
        self.resting.add(name)
        self.last_failed = name

    def changed(self, path: str | None = None) -> None:
        """A file (`path`, when known) was written."""
        self.version += 1
        if path is not None:
            self.file_versions[path] = self.file_versions.get(path, 0) + 1
            self.files.add(path)
        self.subjects.clear()

    def exhausted(self, name: str, *, resting: bool = True) -> bool:
        """True when calling `name` again cannot show anything new until a file changes.

        With `resting`, a tool whose last call failed or was a refused repeat also counts
        until another call goes through.
        """
        if resting and name in self.resting:
            return True
        seen = self.subjects.get(name, set())
        if name in ("list_files", "run_tests"):
            return bool(seen)
        if name == "read_file":
            return bool(self.files) and not self.unread()
        return False


def failing_tests(output: str) -> int | None:
    """How many tests failed or errored in a unittest or pytest run's output (None: cannot tell)."""
    if output.startswith("exit code 0"):
        return 0
    found = regex.search(r"FAILED \(([^)]*)\)", output)  # unittest: FAILED (failures=1, errors=2)
    if found:
        return sum(int(n) for key, n in regex.findall(r"(\w+)=(\d+)", found.group(1)) if key in ("failures", "errors"))
    counts = regex.findall(r"(\d+) (?:failed|errors?)\b", output.splitlines()[-1] if output.strip() else "")
    return sum(int(n) for n in counts) if counts else None


def workspace_tools(workspace: Workspace, *, guard: RepeatGuard | None = None, known_paths: bool = False,
                    test_after_patch: bool = False, undo_unless_better: bool = False) -> list[FunctionTool]:
    """The coding agent's tools bound to `workspace`.

    Args:
        workspace: the folder the tools may touch.
        guard: refuses repeated no-op calls (default: a new `RepeatGuard`).
        known_paths: type the `path` of read_file and patch_file as one of the files that
            exist now, and patch_file's as one that is not read-only (a JSON-schema enum,
            which the agent SDK enforces while decoding): this keeps a small model from
            inventing file names; new files can still be written with write_file.
        test_after_patch: patch_file runs the tests after a patch that applied: it
            succeeds only when they pass, and otherwise fails with their output (the patch
            stays), so a run can end at the patch that fixed the tests.
        undo_unless_better: with `test_after_patch`, a patch after which no fewer tests
            fail is undone (the file is put back and the failure says so): a small model's
            wrong guesses then do not pile up in the file it is fixing.
    """
    guard = guard or RepeatGuard(workspace.files())

    @tool
    def list_files() -> str:
        """List the files of the project with their sizes."""
        guard.check("list_files", {})
        return workspace.list_files()

    def read_file(path: str, start: int = 1, end: int | None = None) -> str:
        """Read a file with line numbers.

        Args:
            path: File to read, relative to the project.
            start: First line to show (1-based).
            end: Last line to show (default: the end of the file).
        """
        file = workspace.relative(workspace.resolve(path))
        shown = workspace.read_file(path, start, end)  # a failed read is no call to refuse next time
        guard.check("read_file", {"path": file, "start": start, "end": end}, subject=file, file=file)
        return shown

    def patch_file(path: str, old: str, new: str) -> str:
        """Replace one exact, unique piece of a file's text.

        Args:
            path: File to change, relative to the project.
            old: Text to replace; it must occur exactly once in the file.
            new: Text to put in its place.
        """
        file = workspace.relative(workspace.writable(path))  # a read-only file is refused first
        if file not in guard.read:
            raise WorkspaceError(f"read {path} with read_file before patching it")
        if old == new:
            raise WorkspaceError("old and new are the same text: a patch must change something")
        undo = test_after_patch and undo_unless_better
        original = workspace.text(path) if undo else None
        before = failing_tests(workspace.run_tests()) if undo else None
        done = workspace.patch_file(path, old, new)
        if not test_after_patch:
            guard.changed(file)
            return done
        output = workspace.run_tests()
        if output.startswith("exit code 0"):
            guard.changed(file)
            return f"{done}; the tests pass"
        after = failing_tests(output)
        if before is not None and after is not None and after >= before:
            workspace.write_file(path, original)
            raise WorkspaceError(f"the tests still fail with this patch, so it was undone ({path} is as it was): "
                                 f"{output}")
        guard.changed(file)
        raise WorkspaceError(f"{done}, but the tests still fail: {output}")

    if known_paths:
        files = tuple(workspace.files())
        changeable = tuple(f for f in files if workspace.is_writable(f))
        if files:
            read_file.__annotations__["path"] = Literal[files]
        if changeable:
            patch_file.__annotations__["path"] = Literal[changeable]

    @tool
    def search(pattern: str, folder: str = ".") -> str:
        """Find lines matching a regular expression (or plain text) in the project's files.

        Args:
            pattern: What to look for.
            folder: A folder or file inside the project to search in.
        """
        guard.check("search", {"pattern": pattern, "folder": folder})
        return workspace.search(pattern, folder)

    @tool
    def write_file(path: str, content: str) -> str:
        """Create or overwrite a file with new content.

        Args:
            path: File to write, relative to the project.
            content: The whole new content of the file.
        """
        done = workspace.write_file(path, content)
        guard.changed(workspace.relative(workspace.writable(path)))
        return done

    notes = [workspace.sandbox.note] if workspace.sandbox.note else []  # told once, with the first run

    @tool
    def run_tests() -> str:
        """Run the project's tests. Failing tests come back as an error with the (shortened) output."""
        guard.check("run_tests", {})
        output = workspace.run_tests()
        if notes:
            output += f"\n({notes.pop()})"
        if not output.startswith("exit code 0"):
            raise WorkspaceError("tests fail: " + output)
        return output

    return [list_files, tool(read_file), search, tool(patch_file), write_file, run_tests]
