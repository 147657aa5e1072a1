"""Callbacks a session calls: each `on_*` registration returns a handle that unregisters it.

Like torch's `RemovableHandle`: `handle.remove()` takes back exactly that registration,
and is safe to call twice or after the hooks were cleared; the handle is also a context
manager, so a hook can live for one block. Registering the same callable twice gives two
registrations and two handles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError


class RemovableHandle:
    """Unregisters one callback from the list it was added to (see the module docstring)."""

    def __init__(self, hooks: list, hook: Callable[..., Any]):
        self._hooks: list | None = hooks
        self._hook = hook

    def remove(self) -> None:
        """Unregister the callback; a second call does nothing."""
        hooks, self._hooks = self._hooks, None
        if hooks is None:
            return
        for i, hook in enumerate(hooks):
            if hook is self._hook:
                del hooks[i]
                return

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register(hooks: list, hook: Callable[..., Any], what: str) -> RemovableHandle:
    """Append `hook` to `hooks`; `what` names the registration in the error for a non-callable."""
    if not callable(hook):
        raise ConfigError(f"{what} needs a function, got {type(hook).__name__} {hook!r}; pass a callable")
    hooks.append(hook)
    return RemovableHandle(hooks, hook)
