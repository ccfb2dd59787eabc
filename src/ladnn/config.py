"""Run configuration as frozen dataclasses, loaded from YAML and overridable by `section.key=value`."""

from __future__ import annotations

import dataclasses
import os
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
    "GatesCfg",
    "DriftCfg",
    "ContinualCfg",
    "LadnnCfg",
    "LossCfg",
    "ModelCfg",
    "TrackingCfg",
    "TrainCfg",
    "ServersCfg",
    "PROFILES",
    "resume_identity",
    "without_run_limits",
    "SERVERS_ENV",
    "load_config",
    "config_to_dict",
]

PROFILES = ("short", "cpu", "paper", "reproduce-cpu")

# Names a YAML file with the `tracking` and `servers` sections of shared servers; see
# `load_config` and docs/operations.md.
SERVERS_ENV = "LADNN_SERVERS"


@dataclass(frozen=True)
class DataCfg:
    # Folder of the COVID-CT release (CT_COVID/, CT_NonCOVID/, lesion-labels/); empty means
    # `$LADNN_DATASETS/covid-ct`.
    release: str = ""
    # Folder that contains the DVC-tracked `data/` and its pointer `data.dvc`; empty means the
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
    # The defaults augment as LA-DNN's reference code does: random scale and horizontal flip.
    # Adding rotation (10 degrees), shift (0.05) and intensity jitter (0.1) lowered the mean
    # validation AUC of EfficientNet-Lite0 over three seeds from 0.889 to 0.861 on the COVID-CT
    # release, with the profile `cpu` (docs/model.md).
    scale_min: float = 0.8
    scale_max: float = 1.2
    hflip: bool = True
    rotate_degrees: float = 0.0
    # Maximum shift as a fraction of the image side.
    translate: float = 0.0
    # Maximum relative change of contrast and of brightness.
    intensity_jitter: float = 0.0
    # Decay of an exponential moving average of the weights, which is then what gets validated
    # and kept; 0 disables it.
    ema_decay: float = 0.0
    # Stop after this many epochs without a better validation AUC; 0 disables early stopping.
    patience: int = 0
    # Stop with an error once training has run this many minutes, keeping the last epoch's
    # checkpoint for `--resume`; 0 means no limit.
    timeout_minutes: float = 360.0
    seed: int = 0
    # Torch intra-op threads; 0 means one per CPU core.
    threads: int = 0
    channels_last: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Under torchrun on GPUs, compute batch-norm statistics over all processes (SyncBatchNorm).
    sync_batchnorm: bool = True
    # Normalise with the running batch-norm statistics and keep them fixed, which suits small
    # batches per process. The scale and shift of each batch-norm layer still train.
    freeze_batchnorm: bool = False
    # Keep the weights and batch-norm statistics of the backbone's first N stages (the stem
    # counts as the first) as pretrained, so that the backward pass stops before them. 0 trains
    # every stage. Ignored, with a warning, for a backbone that starts from random weights.
    freeze_stages: int = 0
    # Arithmetic of the training step's forward pass and loss. "bfloat16" runs convolutions and
    # matrix products under bfloat16 autocast, with float32 weights, optimizer and scores.
    # "auto" chooses bfloat16 on a CUDA device that supports it and on a CPU with AMX tiles or
    # AVX512-BF16 (where ResNet-18 trained in 136 s against 266 s in float32 on AMX), else float32.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


@dataclass(frozen=True)
class EvalCfg:
    # How the decision threshold is chosen on the validation split before it is frozen.
    # "youden" maximises sensitivity + specificity, "sensitivity" reaches `target_sensitivity`,
    # "fixed" uses `fixed_threshold`.
    threshold_rule: Literal["youden", "sensitivity", "fixed"] = "youden"
    target_sensitivity: float = 0.9
    # Average the probabilities of each image and its horizontal mirror.
    tta: bool = False
    fixed_threshold: float = 0.5
    bootstrap: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class GatesCfg:
    # The candidate's test AUC may fall below the champion's (paired, same images) by at most this.
    max_auc_drop: float = 0.02
    # The candidate's sensitivity at its frozen threshold must be at least this.
    min_sensitivity: float = 0.80
    # No earlier batch's test AUC may fall by more than this (batches with both classes only).
    max_batch_auc_drop: float = 0.05


@dataclass(frozen=True)
class DriftCfg:
    # Kolmogorov-Smirnov distance above which an image or score statistic counts as drifted.
    ks_threshold: float = 0.3
    # Cosine distance between mean champion embeddings above which a batch counts as drifted.
    embedding_threshold: float = 0.05


@dataclass(frozen=True)
class ContinualCfg:
    # "scratch": retrain from ImageNet weights on all data; "finetune": start from the champion
    # and train on the new images plus a replay sample of the old ones.
    mode: Literal["scratch", "finetune"] = "scratch"
    replay_fraction: float = 0.3
    # Variants a retraining trains, as "backbone:variant"; empty means the model section's one.
    variants: tuple[str, ...] = ()
    # Variants trained at the same time by the retrain flow's task runner.
    max_parallel: int = 1


@dataclass(frozen=True)
class TrackingCfg:
    # MLflow tracking URI; empty means a SQLite store in the workspace.
    tracking_uri: str = ""
    experiment: str = "ladnn"
    registered_model: str = "ladnn"
    # SQLAlchemy URL of the review audit log; empty means the tracking store's own database.
    audit_uri: str = ""


@dataclass(frozen=True)
class ServersCfg:
    # Prefect API of a Prefect server, e.g. http://prefect:4200/api; empty means the
    # `PREFECT_API_URL` of the environment, else a temporary local server per flow run.
    prefect_api_url: str = ""
    # DVC remote that dataset versions are pushed to, e.g. s3://ladnn-data/dvc; empty means
    # `<workspace>/dvc-remote`. S3 credentials come from AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY.
    dvc_remote: str = ""
    # Endpoint of an S3-compatible object store (MinIO, Ceph), e.g. http://minio:9000; empty
    # means AWS S3. Used by the DVC remote and by MLflow clients that write S3 artifacts.
    s3_endpoint_url: str = ""
    # Dask scheduler address (tcp://host:8786) that the retrain flow sends its variants to;
    # empty means threads in the flow's own process.
    dask_address: str = ""


@dataclass(frozen=True)
class LadnnCfg:
    profile: str = "short"
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    gates: GatesCfg = field(default_factory=GatesCfg)
    drift: DriftCfg = field(default_factory=DriftCfg)
    continual: ContinualCfg = field(default_factory=ContinualCfg)
    tracking: TrackingCfg = field(default_factory=TrackingCfg)
    servers: ServersCfg = field(default_factory=ServersCfg)


def config_to_dict(cfg: LadnnCfg) -> dict[str, Any]:
    """Convert the configuration to plain YAML- and JSON-safe values (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        return value

    return plain(dataclasses.asdict(cfg))


# Settings that limit a training run without changing what it computes.
_RUN_LIMITS = {"train": ("timeout_minutes",)}


def without_run_limits(values: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of configuration `values` without the limits on the run."""
    values = {
        key: dict(value) if isinstance(value, dict) else value for key, value in values.items()
    }
    for section, names in _RUN_LIMITS.items():
        for name in names:
            values.get(section, {}).pop(name, None)
    return values


def resume_identity(cfg: LadnnCfg) -> dict[str, Any]:
    """Return the configuration that a checkpoint must match to be resumed.

    The limits on the run (`train.timeout_minutes`) are left out, so a run stopped by its time
    limit resumes with another limit."""
    return without_run_limits(config_to_dict(cfg))


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
    if typing.get_origin(annotation) is tuple:
        items = (
            value
            if isinstance(value, list | tuple)
            else [part for part in str(value).split(",") if part]
        )
        return tuple(str(item).strip() for item in items)
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


# Sections that a servers file may set: where the shared stores are, nothing about training.
_SERVERS_SECTIONS = ("tracking", "servers")


def read_servers_file(path: str | Path) -> dict[str, Any]:
    """Read a servers file (`tracking` and `servers` sections only); raise ValueError naming the
    file and what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{SERVERS_ENV} names {path}, which is not a file")
    values = _read_yaml(path)
    extra = sorted(set(values) - set(_SERVERS_SECTIONS))
    if extra:
        raise ValueError(
            f"servers file {path} may set only the sections {list(_SERVERS_SECTIONS)}, "
            f"found {extra}: move training settings to a --config file"
        )
    return values


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> LadnnCfg:
    """Resolve the configuration: profile defaults, then the servers file named by
    `$LADNN_SERVERS`, then the YAML file, then overrides.

    The profile comes from `profile`, else from the file's `profile` key, else "short".
    """
    file_values = _read_yaml(Path(path)) if path else {}
    servers_path = os.environ.get(SERVERS_ENV, "").strip()
    servers_values = read_servers_file(servers_path) if servers_path else {}
    chosen = profile or file_values.get("profile") or "short"
    values = _merge(_merge(load_profile(chosen), servers_values), file_values)
    values["profile"] = chosen
    for text in overrides:
        values = _merge(values, _parse_override(text))
    return _build(LadnnCfg, values, "")
