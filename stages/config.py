"""Typed stage configurations: defaults < YAML preset < command-line options.

Each stage declares a dataclass whose fields carry their help text in
``metadata["help"]`` (see :func:`option`) and whose ``validate`` method
rejects contradictory or out-of-range values with a :class:`ChddlError`.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, TypeVar, get_type_hints

import yaml

from stages.errors import ChddlError

C = TypeVar("C")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and its documentation."""
    return dataclasses.field(default=default, metadata={"help": help})


def _coerce(name: str, value: Any, hint: Any) -> Any:
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ChddlError(f"config value '{name}' must not be empty")
    try:
        if hint is bool or text == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int or text.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float or text.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str or text.startswith("str"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if text.startswith("tuple"):
            return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    except (TypeError, ValueError):
        raise ChddlError(f"config value '{name}' = {value!r} has the wrong type; expected {text}") from None
    return value


def build(cls: type[C], *layers: Mapping[str, Any] | None) -> C:
    """Instantiate config ``cls`` from layered mappings, later ones winning.

    ``None`` values in a layer mean "not given" and are skipped, so
    command-line options that default to ``None`` do not mask the preset.
    Unknown keys are rejected with the list of valid ones.
    """
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = key.replace("-", "_")
            if key not in names:
                raise ChddlError(f"unknown {cls.__name__} option '{key}'; valid: {', '.join(names)}")
            if value is not None:
                values[key] = _coerce(key, value, hints[key])
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain YAML/JSON-friendly dict of a config (tuples become lists)."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def require(condition: bool, message: str) -> None:
    """Raise ChddlError(message) unless ``condition`` holds."""
    if not condition:
        raise ChddlError(message)


def require_finite(name: str, value: float) -> None:
    """Reject NaN and infinite hyper-parameters."""
    if not math.isfinite(value):
        raise ChddlError(f"{name} must be a finite number, got {value}")


def presets_dir() -> Path:
    """Folder of the YAML presets shipped with the package (``configs/``)."""
    return Path(str(resources.files("chddl_configs")))


def list_presets() -> list[str]:
    """Names of the shipped presets, e.g. ``datasets/pacs_32``."""
    root = presets_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping safely (no object construction)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ChddlError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ChddlError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ChddlError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def load_preset(name_or_path: str | Path | None, folder: str | None = None) -> dict[str, Any]:
    """Load a preset by file path or by shipped name (``pacs_32`` or ``datasets/pacs_32``).

    A bare name that several folders share resolves to the one in ``folder``
    (the command's own: ``condense``, ``evaluate``, ``datasets``)."""
    if name_or_path is None:
        return {}
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return load_yaml(path)
    root = presets_dir()
    matches = [
        p for p in root.rglob("*.yaml") if str(name_or_path) in (p.stem, str(p.relative_to(root).with_suffix("")))
    ]
    if len(matches) > 1 and folder is not None:
        matches = [p for p in matches if p.parent == root / folder] or matches
    if len(matches) != 1:
        if path.suffix in (".yaml", ".yml"):
            raise ChddlError(f"config file {path} does not exist; pass an existing YAML file or a preset name")
        shown = list_presets()
        if folder is not None:
            shown = [p.removeprefix(f"{folder}/") for p in shown if p.startswith(f"{folder}/")]
        if not shown:
            raise ChddlError(
                f"no config file or preset '{name_or_path}'; no preset ships for {folder}: pass a YAML file"
            )
        where = f"{folder} presets" if folder is not None else "presets"
        raise ChddlError(f"no config file or preset '{name_or_path}'; {where}: {', '.join(shown)}")
    return load_yaml(matches[0])


def section(preset: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One stage's section of a preset (``dataset:``, ``label:``, ...)."""
    value = preset.get(name) or {}
    if not isinstance(value, dict):
        raise ChddlError(f"config section '{name}' must be a mapping")
    return value
