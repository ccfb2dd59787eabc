"""Run configuration as frozen dataclasses, loaded from YAML and overridable by `section.key=value`."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "DataCfg",
    "EvalCfg",
    "LadnnCfg",
    "LossCfg",
    "ModelCfg",
    "TrackingCfg",
    "TrainCfg",
    "PROFILES",
    "load_config",
    "config_to_dict",
]

PROFILES = ("short", "cpu", "paper")


@dataclass(frozen=True)
class DataCfg:
    # Folder of the COVID-CT release (CT_COVID/, CT_NonCOVID/, lesion-labels/); empty means
    # `$LADNN_DATASETS/covid-ct`.
    release: str = ""
    # Folder that holds the DVC-tracked `data/` and its pointer `data.dvc`; empty means the
    # current directory.
    root: str = ""


@dataclass(frozen=True)
class ModelCfg:
    backbone: str = "efficientnet_lite0"
    variant: Literal["ladnn", "baseline"] = "ladnn"
    pretrained: bool = True
    # Local weights file for backbones without a packaged checkpoint; empty means none.
    weights_file: str = ""
    drop_rate: float = 0.2


@dataclass(frozen=True)
class LossCfg:
    # Weight of the COVID term against each lesion term of the per-element binary cross-entropy.
    covid_weight: float = 5.0
    # Treat the unknown lesions of COVID-negative rows as absent instead of masking them.
    negatives_lesion_free: bool = False


@dataclass(frozen=True)
class TrainCfg:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "adam"] = "adamw"
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    image_size: int = 224
    scale_min: float = 0.8
    scale_max: float = 1.2
    hflip: bool = True
    rotate_degrees: float = 10.0
    # Maximum shift as a fraction of the image side.
    translate: float = 0.05
    # Maximum relative change of contrast and of brightness.
    intensity_jitter: float = 0.1
    # Stop after this many epochs without a better validation AUC; 0 disables early stopping.
    patience: int = 0
    seed: int = 0
    # Torch intra-op threads; 0 means one per CPU core.
    threads: int = 0
    channels_last: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class EvalCfg:
    # How the decision threshold is chosen on the validation split before it is frozen.
    threshold_rule: Literal["youden", "fixed"] = "youden"
    fixed_threshold: float = 0.5
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class TrackingCfg:
    # MLflow tracking URI; empty means a SQLite store in the workspace.
    tracking_uri: str = ""
    experiment: str = "ladnn"
    registered_model: str = "ladnn"


@dataclass(frozen=True)
class LadnnCfg:
    profile: str = "short"
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)


def config_to_dict(cfg: LadnnCfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ValueError(
                f"invalid value {value!r} for {where}: expected one of {list(choices)}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"invalid value {value!r} for {where}: expected true or false")
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"invalid value {value!r} for {where}: expected {annotation.__name__}"
            ) from err
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f"unknown configuration key(s) {sorted(unknown)} in {where or 'the top level'}; "
            f"valid keys: {sorted(known)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"invalid value for {key}: expected a mapping, got {value!r}")
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(text: str) -> dict[str, Any]:
    if "=" not in text:
        raise ValueError(
            f"invalid override {text!r}: expected section.key=value, e.g. train.epochs=5"
        )
    path, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    nested: dict[str, Any] = {}
    cursor = nested
    parts = path.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML in configuration file {path}: {err}") from err
    if not isinstance(loaded, dict):
        raise ValueError(
            f"configuration file {path} must hold a mapping, got {type(loaded).__name__}"
        )
    return loaded


def load_profile(profile: str) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: expected one of {list(PROFILES)}")
    text = resources.files("ladnn").joinpath("configs", f"{profile}.yaml").read_text("utf-8")
    return yaml.safe_load(text) or {}


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> LadnnCfg:
    """Resolve the configuration: profile defaults, then the YAML file, then overrides.

    The profile comes from `profile`, else from the file's `profile` key, else "short".
    """
    file_values = _read_yaml(Path(path)) if path else {}
    chosen = profile or file_values.get("profile") or "short"
    values = _merge(load_profile(chosen), file_values)
    values["profile"] = chosen
    for text in overrides:
        values = _merge(values, _parse_override(text))
    return _build(LadnnCfg, values, "")
