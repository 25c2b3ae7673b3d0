"""One definition per option: each stage config field is a CLI option with its own help and default."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from chddl_cli.app import app
from chddl_cli.options import config_options, option_name
from stages.condense import CondenseConfig
from stages.config import option
from stages.data.ingest import DatasetConfig
from stages.evaluate import EvaluateConfig
from stages.label import LabelConfig
from stages.pretrain_experts import ExpertsConfig
from stages.teacher import TeacherConfig

COMMANDS = {
    "condense": [CondenseConfig],
    "evaluate": [EvaluateConfig],
    "label": [DatasetConfig, LabelConfig],
    "pretrain-experts": [ExpertsConfig],
    "train-teacher": [TeacherConfig],
}
RENAMES = {"archs": "arch"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_an_option_with_its_help_and_default(command) -> None:
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    for cls in COMMANDS[command]:
        for f in dataclasses.fields(cls):
            assert f.name in params, f"{command}: no option for {cls.__name__}.{f.name}"
            p = params[f.name]
            assert option_name(f.name, RENAMES) in p.opts
            assert p.default is None  # not given: the preset or the dataclass default applies
            help_text = p.help or ""
            assert f.metadata["help"][:20] in help_text or f.name == "seed"
            if f.name == "seed":
                assert "the global --seed" in help_text
            elif f.default not in (None, ()) and "[" not in f.metadata["help"]:
                shown = "on" if f.default is True else "off" if f.default is False else str(f.default)
                assert f"[default: {shown if not isinstance(f.default, tuple) else ','.join(f.default)}]" in help_text


def test_a_field_added_to_a_config_becomes_an_option() -> None:
    @dataclasses.dataclass
    class Demo:
        speed: float = option(1.5, "how fast")
        names: tuple = option(("a",), "which ones")
        loud: bool = option(False, "shout")

    received = {}
    mini = typer.Typer(rich_markup_mode=None)

    @mini.command()
    @config_options(Demo)
    def run(settings: dict | None = None) -> None:
        received.update(settings)

    @mini.command()
    def other() -> None:  # two commands, so the sub-command name is required
        pass

    runner = CliRunner()
    assert "how fast [default: 1.5]" in runner.invoke(mini, ["run", "--help"], terminal_width=200).output
    assert runner.invoke(mini, ["run", "--speed", "2", "--names", "x, y", "--loud"]).exit_code == 0
    assert received == {"speed": 2.0, "names": ("x", "y"), "loud": True}
    assert runner.invoke(mini, ["run"]).exit_code == 0 and received == {"speed": None, "names": None, "loud": None}
