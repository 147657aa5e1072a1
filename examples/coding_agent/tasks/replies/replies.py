"""Formats helpdesk replies (the rule for the sign-off is in README.md)."""

import textwrap

SIGN_OFF = "-- the support team"
WIDTH = 72
QUOTE_MARK = "> "


def greeting(name):
    """The first line of a reply: the customer's first name, or a neutral greeting."""
    first = name.strip().split(" ")[0] if name and name.strip() else ""
    return f"Hello {first}," if first else "Hello,"


def wrap(body):
    """The reply's body wrapped at WIDTH columns, paragraph by paragraph."""
    paragraphs = [p.strip() for p in body.strip().split("\n\n") if p.strip()]
    return "\n\n".join(textwrap.fill(p, WIDTH) for p in paragraphs)


def quote(message):
    """The customer's message quoted line by line, as mail clients show it."""
    return "\n".join(QUOTE_MARK + line for line in message.strip().splitlines())


def format_reply(name, body):
    """The reply to `name`: a greeting, `body`, a blank line and the sign-off."""
    return f"{greeting(name)}\n\n{wrap(body)}\n\n{SIGN_OFF}"


def format_reply_quoting(name, body, message):
    """A reply that quotes the customer's message below the sign-off."""
    return format_reply(name, body) + "\n\n" + quote(message)
