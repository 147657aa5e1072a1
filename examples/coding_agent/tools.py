"""The coding agent's tools: thin, documented wrappers over one `Workspace`.

Each tool's JSON schema comes from its type hints and docstring (`agentmem.agents.tool`).
A `WorkspaceError` raised here (a path outside the workspace, a missing file, a patch that
does not apply) goes back to the model as an observation, not as a crash.
"""

from __future__ import annotations

from agentmem.agents import FunctionTool, tool

from .workspace import Workspace


def workspace_tools(workspace: Workspace) -> list[FunctionTool]:
    """The five tools of the coding agent, bound to `workspace`."""

    @tool
    def list_files(folder: str = ".") -> str:
        """List the files of the project with their sizes.

        Args:
            folder: A folder inside the project ("." for all of it).
        """
        return workspace.list_files(folder)

    @tool
    def read_file(path: str, start: int = 1, end: int | None = None) -> str:
        """Read a file with line numbers.

        Args:
            path: File to read, relative to the project.
            start: First line to show (1-based).
            end: Last line to show (default: the end of the file).
        """
        return workspace.read_file(path, start, end)

    @tool
    def search(pattern: str, folder: str = ".") -> str:
        """Find lines matching a regular expression (or plain text) in the project's files.

        Args:
            pattern: What to look for.
            folder: A folder or file inside the project to search in.
        """
        return workspace.search(pattern, folder)

    @tool
    def patch_file(path: str, old: str, new: str) -> str:
        """Replace one exact, unique piece of a file's text.

        Args:
            path: File to change, relative to the project.
            old: Text to replace; it must occur exactly once in the file.
            new: Text to put in its place.
        """
        return workspace.patch_file(path, old, new)

    @tool
    def write_file(path: str, content: str) -> str:
        """Create or overwrite a file with new content.

        Args:
            path: File to write, relative to the project.
            content: The whole new content of the file.
        """
        return workspace.write_file(path, content)

    @tool
    def run_tests() -> str:
        """Run the project's tests; shows the exit code and the (shortened) output."""
        return workspace.run_tests()

    return [list_files, read_file, search, patch_file, write_file, run_tests]
