"""The options many commands share (--model, --ratio, --limit, --method, --json): declared once in
`agentmem.cli.common`, accepted by every command that has them, and bad values refused before a model loads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_cli import one_error_line, run

from agentmem.cli import build_parser, common

SHARED = ("--model", "--ratio", "--limit", "--method", "--json")
# What each command (but chat, whose --model and --json differ on purpose) takes of them.
EXPECTED = {
    ("compact",): {"--model", "--ratio", "--method"},
    ("profile-heads",): {"--model", "--ratio"},
    ("demo",): {"--model", "--ratio", "--limit", "--method", "--json"},
    ("bench", "compaction"): {"--model", "--json"},
    ("bench", "fidelity"): {"--model", "--json"},
    ("bench", "engine"): {"--model", "--json"},
    ("bench", "soak"): {"--model", "--ratio", "--limit", "--method", "--json"},
    ("bench", "recall"): {"--model", "--ratio", "--limit", "--method", "--json"},  # --method: --methods' alias
    ("scenario", "aime"): {"--model", "--ratio", "--limit", "--method", "--json"},
}
GOOD = {"--model": ("some/model", "some/model"), "--ratio": ("7.5", 7.5), "--limit": ("4096", 4096),
        "--method": ("am", "am"), "--json": ("out.json", Path("out.json"))}
BAD = {"--ratio": ("0.5", "must be a finite number >= 1, got 0.5; pass e.g. 5"),
       "--limit": ("0", "must be "),  # ">= 1" or, for the demo, "256 or more"
       "--method": ("fast", "unknown compaction method 'fast'; choose one of am, am-fast")}


def _parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _options(path: tuple[str, ...]) -> dict[str, argparse.Action]:
    return {s: a for a in _parser_of(path)._actions for s in a.option_strings if s in SHARED}


CASES = [(path, option) for path, options in EXPECTED.items() for option in sorted(options)]


def _id(case: tuple) -> str:
    return " ".join(case[0]) + " " + case[1] if isinstance(case, tuple) and len(case) == 2 else str(case)


@pytest.mark.parametrize("path", EXPECTED, ids=" ".join)
def test_each_command_still_has_its_shared_options(path: tuple[str, ...]) -> None:
    assert set(_options(path)) == EXPECTED[path]


@pytest.mark.parametrize("path, option", CASES, ids=[_id(c) for c in CASES])
def test_the_shared_options_are_the_common_ones(path: tuple[str, ...], option: str) -> None:
    """Same type, default and help wording everywhere: they come from common.add_*."""
    action = _options(path)[option]
    if option == "--model":
        from agentmem.coding_agent import DEMO_MODEL  # the demo's own: the built-in that fixes its bug

        assert action.default == (DEMO_MODEL if path in (("demo",), ("bench", "agent")) else common.DEFAULT_MODEL)
        assert action.help.startswith("built-in name, HF id or local path")
    elif option == "--ratio":
        assert action.type is common.ratio and action.help.endswith(f"(default {action.default:g})")
    elif option == "--limit":
        assert action.type is common.positive_int or action.type.__name__.startswith("whole number >= ")
        assert action.help.startswith("physical KV slots") and action.help.endswith(f"(default {action.default})")
    elif option == "--method":
        assert action.type is common.method
        assert action.nargs == "+" or action.help == f"compaction method (default {action.default})"  # recall: several
    else:
        assert action.type is Path and action.metavar == "PATH" and action.default is None


@pytest.mark.parametrize("path, option", CASES, ids=[_id(c) for c in CASES])
def test_each_command_accepts_a_good_value(path: tuple[str, ...], option: str) -> None:
    text, value = GOOD[option]
    args = build_parser().parse_args([*path, option, text])
    got = getattr(args, _options(path)[option].dest)
    assert got == ([value] if path == ("bench", "recall") and option == "--method" else value)


BAD_CASES = [c for c in CASES if c[1] in BAD]


@pytest.mark.parametrize("path, option", BAD_CASES, ids=[_id(c) for c in BAD_CASES])
def test_each_command_refuses_a_bad_value_before_a_model_loads(no_model_load, capsys: pytest.CaptureFixture,
                                                               path: tuple[str, ...], option: str) -> None:
    text, words = BAD[option]
    code, _, err = run(capsys, *path, option, text)
    line = one_error_line(err)
    assert code == 2 and words in line and "loaded" not in err
    assert f"argument {option}" in line  # bench recall's is "argument --methods/--method:"


@pytest.mark.parametrize("path", EXPECTED, ids=" ".join)
def test_help_lists_the_shared_options_with_their_defaults(path: tuple[str, ...],
                                                           capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, *path, "--help")
    assert code == 0
    flat = " ".join(out.split())
    for option, action in _options(path).items():
        assert option in flat and " ".join(action.help.split()) in flat
