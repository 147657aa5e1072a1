"""Checks and normalises order codes (the rule is in README.md)."""

import re

PATTERN = re.compile(r"^[A-Z]{2}-[0-9]{3,5}$")


def normalise(code):
    """`code` without surrounding spaces, in capitals."""
    return code.strip().upper()


def is_valid(code):
    """True when `code`, once normalised, follows the rule for order codes."""
    return bool(PATTERN.match(normalise(code)))
