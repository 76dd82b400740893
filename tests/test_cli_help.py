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
    text = _subparsers(cli.build_parser())["generate"].format_help()
    assert "(default: 0.8)" in text and "(default: 40)" in text and "(default: 32)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_verbose_is_shared_by_project_commands():
    args = cli.build_parser().parse_args(["run", "--verbose"])
    assert args.verbose is True
    assert cli.build_parser().parse_args(["run"]).verbose is False
