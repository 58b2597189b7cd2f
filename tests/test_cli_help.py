"""Every command's --help: each option explained, defaults shown, one example."""

from __future__ import annotations

import argparse

import pytest

from kwskit.cli import EXAMPLES, build_parser


def _commands(parser: argparse.ArgumentParser, path: str = ""):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, f"{path} {name}".strip())


COMMANDS = dict(_commands(build_parser()))


def test_every_command_has_an_example():
    assert set(COMMANDS) == set(EXAMPLES)
    assert {"train", "stream", "eval-stream", "data check"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_explains_every_option_and_shows_defaults(path):
    parser = COMMANDS[path]
    missing = [a.dest for a in parser._actions if not a.help]
    assert not missing, f"kwskit {path}: options without help: {missing}"
    text = parser.format_help()
    assert f"example:\n  {EXAMPLES[path]}" in text
    for a in parser._actions:
        if a.option_strings and isinstance(a.default, (int, float, str)) \
                and not isinstance(a.default, bool) and a.default != argparse.SUPPRESS:
            assert f"(default: {a.default})" in " ".join(text.split()), (path, a.dest)
