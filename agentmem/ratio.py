"""What a compaction ratio is, checked in one place.

A ratio is a finite number >= 1: 5 keeps a fifth of a span's physical slots, 1 keeps them
all. `compact`, `Session.compact`, the policies' ratios and the CLI's `--ratio` options all
check it with `check_ratio`, so they accept the same values and say the same thing about a
bad one. The module imports nothing heavy: the CLI checks `--ratio` before torch loads.
"""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError


def check_ratio(owner: str, name: str, value: object) -> float:
    """Return `value` as a float if it is a compaction ratio, else raise `ConfigError`.

    Args:
        owner: who checks, the message's prefix (e.g. "FixedRatio"); "" for none.
        name: what the value is called (e.g. "ratio"); "" when the caller names it
            itself (argparse prefixes "argument --ratio:").
        value: a real number (Python, numpy); bools, strings and tensors are refused.

    Raises:
        ConfigError: `value` is not a finite real number >= 1. The message names it and
            says what to pass.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 1:
        subject = "".join((f"{owner}: " if owner else "", f"{name} " if name else ""))
        raise ConfigError(f"{subject}must be a finite number >= 1, got {value!r}; pass e.g. 5 to keep a fifth "
                          f"of a span (1 keeps it whole)")
    return float(value)
