"""`atomfm`: every listed command group imports, registers and shows in the help."""

from __future__ import annotations

import importlib
import re

import pytest

from launch import cli


@pytest.mark.parametrize(("group", "module"), cli.COMMAND_GROUPS)
def test_every_listed_command_group_imports_and_has_register(group, module):
    assert callable(importlib.import_module(module).register), f"{module} (group {group!r}) has no register"


def test_help_lists_every_command_group(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    listed = re.findall(r"^ {4}(\S+)", capsys.readouterr().out, flags=re.MULTILINE)
    assert listed == [group for group, _ in cli.COMMAND_GROUPS]


def test_a_listed_module_that_does_not_import_is_an_error_naming_its_group(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_GROUPS", (*cli.COMMAND_GROUPS, ("ghost", "eval.no_such_module")))
    with pytest.raises(ImportError, match=r"command group 'ghost'.*eval\.no_such_module"):
        cli.build_parser()


def test_generate_is_a_command(capsys):
    """docs/generation.md's `atomfm generate` (it was a module no command group listed)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["generate", "--help"])
    assert stop.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out
