"""Username checks for sign-up."""

import re

MIN_LENGTH = 3
MAX_LENGTH = 20
ALLOWED = re.compile(r"^[A-Za-z0-9_]+$")


def valid_username(name):
    """True when `name` has an allowed length and only allowed characters."""
    return MIN_LENGTH <= len(name) <= MAX_LENGTH and bool(ALLOWED.match(name))
