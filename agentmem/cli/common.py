"""What every command shares: loading a model, opening a store, argument types, progress bars.

Progress bars go to stderr, only when stderr is a terminal unless `--progress` or
`--no-progress` forced them on or off (`configure`). Library code stays quiet: it gets a
callback or a `progress=` flag from here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_STORE = Path("agentmem.db")

_forced: bool | None = None  # set by `configure` from --progress / --no-progress


def configure(*, progress: bool | None) -> None:
    """Force progress bars on (True) or off (False), or leave them to stderr being a TTY (None)."""
    global _forced
    _forced = progress


def progress_enabled() -> bool:
    """True when progress bars should be drawn on stderr."""
    if _forced is not None:
        return _forced
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def bar(**kwargs: Any):
    """A tqdm bar on stderr, disabled unless `progress_enabled()`; kwargs go to tqdm."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=not progress_enabled(), dynamic_ncols=True, **kwargs)


class Activity:
    """A live 'desc [elapsed]' line on stderr for one long call that reports no progress of its own.

    Use as a context manager, or `start()` / `stop()` when the two ends are in different
    callbacks (compaction hooks). A no-op when progress bars are off.
    """

    def __init__(self, desc: str):
        self.desc = desc
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Activity:
        if self._bar is not None or not progress_enabled():
            return self
        self._bar = bar(total=None, desc=self.desc, leave=False, bar_format="{desc} [{elapsed}]")
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="agentmem-activity", daemon=True)
        self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._bar.refresh()

    def stop(self) -> None:
        if self._bar is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.close()
        self._bar = self._thread = None

    def __enter__(self) -> Activity:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def say(line: str) -> None:
    """Progress line of a benchmark on stderr (the `progress=` callback of `agentmem.bench`)."""
    print(line, file=sys.stderr, flush=True)


def load(name: str):
    """Load a model and its tokenizer with a conversion progress bar; report the time on stderr.

    transformers' own loading bars follow the same switch (restored afterwards).
    """
    from transformers.utils import logging as hf_logging

    from .. import models

    began = time.perf_counter()
    shown = hf_logging.is_progress_bar_enabled()
    if not progress_enabled():
        hf_logging.disable_progress_bar()
    try:
        model, tokenizer = models.load_model(name, progress=progress_enabled())
    finally:
        if shown and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
    print(f"loaded {name} in {time.perf_counter() - began:.1f}s", file=sys.stderr)
    return model, tokenizer


def open_store(path: Path, *, must_exist: bool):
    """Open the session database at `path`.

    Raises:
        ConfigError: `must_exist` and there is no file there (a missing database is never
            created just to be read), or `path` is a directory.
    """
    from ..store import Store

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the database file with --store")
    if must_exist and not path.exists():
        raise ConfigError(f"no session database at {path}; pass --store PATH, or start a session with "
                          f"`agentmem chat --store {path}`")
    return Store(path)


def write_json(path: Path | None, value: Any, *, indent: int | None = 1) -> None:
    """Write `value` as JSON to `path`, or to stdout when `path` is None or '-'."""
    text = json.dumps(value, indent=indent)
    if path is None or str(path) == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")


# ----------------------------------------------------------------------------- argument types


def ratio(text: str) -> float:
    """argparse type: a finite compaction ratio >= 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 (10 keeps a tenth), got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (10 keeps a tenth), got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def megabytes(nbytes: int | float | None) -> str:
    """Bytes as '12.3 MB' (or '-' when unknown)."""
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f} MB"
