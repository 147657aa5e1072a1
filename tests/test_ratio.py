"""One ratio rule: every place that takes a compaction ratio accepts and refuses the same values, in the same words."""

from __future__ import annotations

import argparse
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from agentmem import compact
from agentmem.cli import common
from agentmem.errors import ConfigError
from agentmem.policies import FixedRatio, TargetSize
from agentmem.ratio import check_ratio

RULE = "must be a finite number >= 1"
ADVICE = "pass e.g. 5 to keep a fifth of a span"

# Each takes a value and returns the ratio it accepted (or raises).
TAKERS = {
    "check_ratio": lambda v: check_ratio("owner", "ratio", v),
    "FixedRatio": lambda v: FixedRatio(v).ratio,
    "FixedRatio.by_kind": lambda v: FixedRatio(5, by_kind={"user": v}).by_kind["user"],
    "TargetSize.min_ratio": lambda v: TargetSize(10, min_ratio=v, max_ratio=max(v, 50) if _real(v) else 50).min_ratio,
}


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


GOOD = [1, 5, 10.5, 1e6, Fraction(5, 2), np.float32(4.0), np.int64(3)]
BAD = [0, 0.5, -3, 0.999, float("inf"), float("nan"), True, "5", None, torch.tensor(5.0), [5]]


@pytest.mark.parametrize("taker", TAKERS)
@pytest.mark.parametrize("value", GOOD, ids=repr)
def test_every_taker_accepts_a_ratio_as_a_float(taker: str, value: object) -> None:
    got = TAKERS[taker](value)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("taker", TAKERS)
@pytest.mark.parametrize("value", BAD, ids=repr)
def test_every_taker_refuses_a_bad_ratio_with_the_same_words(taker: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        TAKERS[taker](value)
    message = str(caught.value)
    assert RULE in message and ADVICE in message and f"got {value!r}" in message


@pytest.mark.parametrize("text", ["1", "5", "10.5", "1e6"])
def test_the_cli_type_accepts_what_the_library_accepts(text: str) -> None:
    assert common.ratio(text) == check_ratio("", "", float(text))


@pytest.mark.parametrize("text", ["0", "0.5", "-3", "inf", "nan", "ten", "", "5x"])
def test_the_cli_type_refuses_with_the_library_words(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        common.ratio(text)
    message = str(caught.value)
    assert message.startswith(RULE) and ADVICE in message  # argparse prefixes "argument --ratio: "


def test_the_message_names_its_owner_and_argument() -> None:
    with pytest.raises(ConfigError, match=r"^FixedRatio: by_kind\['user'\] must be a finite number >= 1, got 0\b"):
        FixedRatio(5, by_kind={"user": 0})
    with pytest.raises(ConfigError, match=r"^compact: ratio must be"):
        compact(None, None, None, ratio=0.5)  # checked before the model is touched
