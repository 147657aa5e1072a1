"""What every command shares: loading a model, opening a store, argument types, progress bars.

Progress bars go to stderr, only when stderr is a terminal unless `--progress` or
`--no-progress` forced them on or off (`configure`). Library code stays quiet: it gets a
callback or a `progress=` flag from here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

from ..errors import AgentmemError, ConfigError, ModelNotAvailableError
from ..ratio import check_ratio

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

    With `expected` (seconds, an estimate) the line also shows how long is left:
    'desc [0:04, about 0:07 left]', then 'longer than estimated' once past it. Use as a
    context manager, or `start()` / `stop()` when the two ends are in different callbacks
    (compaction hooks). A no-op when progress bars are off.
    """

    def __init__(self, desc: str, *, expected: float | None = None):
        self.desc = desc
        self.expected = expected if expected is not None and math.isfinite(expected) and expected > 0 else None
        self._bar = None
        self._began = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Activity:
        if self._bar is not None or not progress_enabled():
            return self
        self._began = time.perf_counter()
        self._bar = bar(total=None, desc=self.line(0.0), leave=False, bar_format="{desc}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="agentmem-activity", daemon=True)
        self._thread.start()
        return self

    def line(self, elapsed: float) -> str:
        """The text shown after `elapsed` seconds."""
        if self.expected is None:
            return f"{self.desc} [{_clock(elapsed)}]"
        if elapsed <= self.expected:
            return f"{self.desc} [{_clock(elapsed)}, about {_clock(self.expected - elapsed)} left]"
        return f"{self.desc} [{_clock(elapsed)}, longer than estimated ({_clock(self.expected)})]"

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._bar.set_description_str(self.line(time.perf_counter() - self._began), refresh=True)

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


def _clock(seconds: float) -> str:
    """Seconds as 'M:SS' (or 'H:MM:SS')."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


PLOTS_INSTALL = "pip install 'agentmem[plots]'"


def plot_problem(path: Path | None, option: str = "--plot") -> str | None:
    """Why a command's PNG cannot be drawn (matplotlib is the optional `plots` extra), or None.

    Call it before any work: an explicit `--plot PATH` without matplotlib fails now, before
    a model loads; a default plot is skipped and the returned reason says how to get one.

    Raises:
        ConfigError: `path` was asked for and matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if path is not None:
            raise ConfigError(f"{option} {path} needs matplotlib, which is optional: {PLOTS_INSTALL}, "
                              f"or leave out {option}") from None
        return f"matplotlib is not installed ({PLOTS_INSTALL} to draw it)"
    return None


def say(line: str) -> None:
    """Progress line of a benchmark on stderr (the `progress=` callback of `agentmem.bench`)."""
    print(line, file=sys.stderr, flush=True)


def load(name: str):
    """Load a model and its tokenizer with a conversion progress bar; report the time on stderr.

    transformers' own loading bars follow the same switch (restored afterwards).
    """
    from transformers.utils import logging as hf_logging

    from .. import loading

    folder = Path(name).expanduser()
    local = name not in loading.builtin_models() and folder.is_dir()
    if local and not (folder / "config.json").is_file():
        raise ConfigError(f"{name} is a folder without config.json, not a model; pass a Hugging Face model folder "
                          f"(config.json, weights, tokenizer files), a built-in name "
                          f"({', '.join(loading.builtin_models())}) or a Hugging Face id")
    began = time.perf_counter()
    shown = hf_logging.is_progress_bar_enabled()
    if not progress_enabled():
        hf_logging.disable_progress_bar()
    try:
        model, tokenizer = loading.load_model(name, progress=progress_enabled())
    except AgentmemError:
        raise
    except (OSError, ValueError) as exc:  # transformers on a damaged folder: missing weights, a bad config
        if not local:
            raise
        raise ModelNotAvailableError(f"cannot load the model in {name}: {exc}") from exc
    finally:
        if shown and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
    print(f"loaded {name} in {time.perf_counter() - began:.1f}s", file=sys.stderr)
    return model, tokenizer


def open_store(path: Path, *, must_exist: bool, readonly: bool = False):
    """Open the session database at `path`.

    Args:
        path: the database file.
        must_exist: fail instead of creating a missing file.
        readonly: SQLite's read-only mode (`Store(readonly=True)`): nothing is created,
            migrated or written, for the commands that only read. Otherwise a write probe
            checks now, before a model loads, that the file can be written.

    Raises:
        ConfigError: `must_exist` or `readonly` and there is no file there (a missing
            database is never created just to be read), `path` is a directory, or the
            database cannot be read or written.
        NotAStoreError: the file is another program's SQLite database (left untouched).
    """
    from ..store import Store

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the database file with --store")
    if (must_exist or readonly) and not path.exists():
        raise ConfigError(f"no session database at {path}; pass --store PATH, or start a session with "
                          f"`agentmem chat --store {path}`")
    if not readonly:
        check_creatable(path)
    store = Store(path, readonly=readonly)  # SQLite's refusals arrive as StoreWriteError
    if not readonly:
        try:
            store.check_writable()
        except BaseException:
            store.close()
            raise
    return store


def check_creatable(path: Path) -> None:
    """Fail now if the session database at `path` could not be created; creates nothing.

    Raises:
        ConfigError: the nearest existing folder above `path` is not writable (or not a folder).
    """
    path = Path(path)
    if path.exists():
        return
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the session database {path}: {folder} is not a writable folder; "
                          f"pass --store PATH in a writable folder")


_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape(text: str, *, newlines: bool = False) -> str:
    """Text from a database made safe for a terminal: control characters as repr-style escapes.

    C0 and C1 controls, DEL, bidi overrides, line separators and lone surrogates become
    `\\x1b`, `\\u202e`...; with `newlines`, newline and tab stay as they are.
    """
    def shown(c: str) -> str:
        if newlines and c in "\n\t":
            return c
        if c in _BIDI or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp"):
            return repr(c)[1:-1]
        return c

    return "".join(shown(c) for c in text)


def write_json(path: Path | None, value: Any, *, indent: int | None = 1) -> None:
    """Write `value` as JSON to `path`, or to stdout when `path` is None or '-'."""
    text = json.dumps(value, indent=indent)
    if path is None or str(path) == "-":
        print(text)
    else:
        try:
            Path(path).write_text(text + "\n")
        except OSError as exc:  # a write error (ENOSPC) names no file: name it
            if exc.filename:
                raise
            raise OSError(exc.errno, exc.strerror, str(path)) from exc


# ----------------------------------------------------------------------------- argument types


def ratio(text: str) -> float:
    """argparse type: a compaction ratio, by the library's rule (`agentmem.ratio.check_ratio`)."""
    try:
        value: object = float(text)
    except ValueError:
        value = text  # not a number: check_ratio says what to pass
    try:
        return check_ratio("", "", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def at_least(minimum: int, why: str):
    """argparse type: an integer >= `minimum`; `why` ends the error message."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more ({why}), got {text!r}")
        return value

    check.__name__ = f"whole number >= {minimum}"
    return check


def method(text: str) -> str:
    """argparse type: a compaction method of `agentmem.compaction.METHODS` (imports torch, not a model)."""
    from ..compaction import METHODS

    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown compaction method {text!r}; choose one of {', '.join(METHODS)}")
    return text


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


# ----------------------------------------------------------------------------- options many commands share


def add_model(parser: argparse.ArgumentParser, *, default: str = DEFAULT_MODEL, note: str = "") -> None:
    """`--model NAME` (default `DEFAULT_MODEL`, or `default`); `note` extends its help."""
    extra = f"; {note}" if note else ""
    parser.add_argument("--model", default=default,
                        help=f"built-in name, HF id or local path (default {default}{extra})")


def add_ratio(parser: argparse.ArgumentParser, default: float, *, what: str = "compaction ratio") -> None:
    """`--ratio X`, checked by `ratio` (a finite number >= 1) while the arguments are parsed."""
    parser.add_argument("--ratio", type=ratio, default=float(default), help=f"{what} (default {default:g})")


def add_limit(parser: argparse.ArgumentParser, default: int = 2048, *, minimum: int = 1, why: str = "") -> None:
    """`--limit N`: the physical KV slots a session may hold, a whole number >= `minimum`.

    `why` (required with `minimum` above 1) says in the error why smaller limits fail.
    """
    if minimum > 1:
        parser.add_argument("--limit", type=at_least(minimum, why), default=default,
                            help=f"physical KV slots, at least {minimum} (default {default})")
    else:
        parser.add_argument("--limit", type=positive_int, default=default,
                            help=f"physical KV slots (default {default})")


def add_method(parser: argparse.ArgumentParser, default: str = "am-fast") -> None:
    """`--method NAME`, checked by `method` (one of `agentmem.compaction.METHODS`)."""
    parser.add_argument("--method", type=method, default=default, help=f"compaction method (default {default})")


def add_json(parser: argparse.ArgumentParser, *, help: str = "write the full result here") -> None:  # noqa: A002
    """`--json PATH`: a file the command writes its result to as JSON."""
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help=help)


def megabytes(nbytes: int | float | None) -> str:
    """Bytes as '12.3 MB' (or '-' when unknown)."""
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f} MB"
