"""Configuration: presets, layering, validation, registry errors."""

from __future__ import annotations

import pytest

from stages.condense import CondenseConfig
from stages.config import build, list_presets, load_preset, load_yaml, presets_dir, section
from stages.data.ingest import DatasetConfig
from stages.errors import ChddlError
from stages.evaluate import EvaluateConfig
from stages.label import LabelConfig
from stages.pretrain_experts import ExpertsConfig

#: the config class of each preset section
SECTIONS = {
    "dataset": DatasetConfig,
    "label": LabelConfig,
    "condense": CondenseConfig,
    "evaluate": EvaluateConfig,
    "experts": ExpertsConfig,
}


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_preset_loads_and_validates(name: str) -> None:
    preset = load_yaml(presets_dir() / f"{name}.yaml")
    assert preset, f"{name} is empty"
    for key, value in preset.items():
        assert key in SECTIONS, f"{name}: unknown section {key}"
        build(SECTIONS[key], value)


def test_presets_exist_for_the_paper_datasets() -> None:
    assert {"datasets/pacs_32", "datasets/pacs_64", "datasets/cifar10"} <= set(list_presets())


def test_command_line_overrides_preset_overrides_defaults() -> None:
    preset = load_preset("pacs_64")
    cfg = build(LabelConfig, section(preset, "label"), {"beta": 0.05, "num_domains": None})
    assert cfg.beta == 0.05 and cfg.num_domains == 4
    assert build(DatasetConfig, section(preset, "dataset")).size == 64


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ChddlError, match="unknown LabelConfig option 'betta'; valid: labeler"):
        build(LabelConfig, {"betta": 0.1})


@pytest.mark.parametrize(
    "values,message",
    [
        ({"beta": 0.0}, "--beta must lie in"),
        ({"beta": float("nan")}, "finite"),
        ({"num_domains": 0}, "--num-domains must be at least 1"),
        ({"labeler": "magic"}, "unknown labeler 'magic'"),
        ({"num_domains": "four"}, "wrong type"),
    ],
)
def test_invalid_values_are_rejected(values, message) -> None:
    with pytest.raises(ChddlError, match=message):
        build(LabelConfig, values)


def test_unknown_preset_lists_the_shipped_ones() -> None:
    with pytest.raises(ChddlError, match="datasets/pacs_32"):
        load_preset("nope")


def test_yaml_preset_from_a_path(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("label:\n  beta: 0.3\n")
    assert build(LabelConfig, section(load_preset(str(path)), "label")).beta == 0.3


@pytest.mark.parametrize("minutes", [0.0, -1.0, float("nan")])
def test_checkpoint_minutes_must_be_positive(minutes) -> None:
    from stages.condense import CondenseConfig

    with pytest.raises(ChddlError, match="checkpoint_minutes must be a positive number of minutes"):
        build(CondenseConfig, {"checkpoint_minutes": minutes})
