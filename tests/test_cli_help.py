"""The CLI documents itself: --version, a description for every command, help (and the
default where there is one) for every argument."""

import argparse

import pytest

from flows import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"gruflow {version('gruflow')}"


def test_every_command_has_a_description_and_every_argument_help():
    commands = _subparsers(cli.build_parser())
    assert {"run", "generate", "score", "similar", "promote", "retrain"} <= set(commands)
    missing = []
    for name, parser in commands.items():
        if not parser.description:
            missing.append(f"{name}: description")
        for action in parser._actions:
            if action.help in (None, "", argparse.SUPPRESS):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"without help: {missing}"


def test_help_shows_flag_defaults():
    commands = _subparsers(cli.build_parser())
    text = commands["generate"].format_help()
    # generation flags default to the model's own values, and say so by name
    assert "params.yaml generate.temperature" in " ".join(text.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    score = " ".join(commands["score"].format_help().split())
    assert "(default: -1)" in score and "(default: -1.0)" in score


def test_verbose_is_shared_by_project_commands():
    args = cli.build_parser().parse_args(["run", "--verbose"])
    assert args.verbose is True
    assert cli.build_parser().parse_args(["run"]).verbose is False
