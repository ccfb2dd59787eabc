"""Use a registered LA-DNN model: choose and load it, evaluate it on a split, diagnose images.

These functions back `ladnn evaluate`, `ladnn explain` and `ladnn diagnose`. A model is rebuilt from
the safetensors weights and JSON description in its pyfunc artifacts, so no pickled code is loaded.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ladnn.config import LadnnCfg
from ladnn.data.images import normalise_image
from ladnn.data.lesions import LESIONS
from ladnn.data.store import DatasetStore
from ladnn.evaluation.report import EvaluationResult, evaluate_probabilities, evaluate_slices
from ladnn.models.backbones import BACKBONES, BackboneSpec
from ladnn.models.ladnn import LADNN, OUTPUT_NAMES
from ladnn.tracking.pyfunc import load_logged_model
from ladnn.tracking.store import configure_mlflow
from ladnn.training.images import ImageCache, load_image_tensor
from ladnn.training.trainer import predict
from ladnn.workspace import Workspace

__all__ = [
    "CHAMPION_ALIAS",
    "ModelNotFoundError",
    "LoadedModel",
    "SplitEvaluation",
    "Diagnosis",
    "choose_version",
    "load_model",
    "select_split",
    "evaluate_split",
    "diagnose_image",
    "lesion_names",
]

CHAMPION_ALIAS = "champion"
SPLIT_CHOICES = ("test", "val", "train", "all")


class ModelNotFoundError(LookupError):
    """The requested registered model, version or run does not exist."""


@dataclass
class LoadedModel:
    model: LADNN
    # The model description logged with the weights: backbone, variant, image_size, mean, std,
    # threshold, tta and dataset_version.
    spec: dict
    # Model name and the reason it was chosen, for the user, e.g. "ladnn version 3 (alias champion)".
    description: str
    version: str | None = None
    run_id: str | None = None

    @property
    def threshold(self) -> float:
        return float(self.spec["threshold"])

    @property
    def backbone_spec(self) -> BackboneSpec:
        """The backbone's registry entry with the mean and std the model was trained with."""
        base = BACKBONES[self.spec["backbone"]]
        return dataclasses.replace(base, mean=tuple(self.spec["mean"]), std=tuple(self.spec["std"]))


def choose_version(client: MlflowClient, name: str, version: str | None) -> tuple[str, str]:
    """Return the version to use and why: `version` if given, else `champion`, else the latest.

    Raises `ModelNotFoundError` when the model or the requested version is not registered.
    """
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise ModelNotFoundError(
            f"no registered model {name!r}: train one with `ladnn train` or `ladnn cycle`"
        ) from None
    if version is not None:
        try:
            client.get_model_version(name, str(version))
        except MlflowException:
            raise ModelNotFoundError(f"model {name!r} has no version {version}") from None
        return str(version), "requested"
    aliases = registered.aliases or {}
    if CHAMPION_ALIAS in aliases:
        return str(aliases[CHAMPION_ALIAS]), f"alias {CHAMPION_ALIAS}"
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise ModelNotFoundError(f"model {name!r} has no registered version")
    latest = max(int(item.version) for item in versions)
    return str(latest), f"latest version; no {CHAMPION_ALIAS} alias is set"


def _load_from_uri(artifact_uri: str) -> tuple[LADNN, dict]:
    try:
        return load_logged_model(artifact_uri)
    except FileNotFoundError as err:
        raise ModelNotFoundError(str(err)) from None


def load_model(
    cfg: LadnnCfg,
    workspace: Workspace,
    *,
    version: str | None = None,
    run_id: str | None = None,
) -> LoadedModel:
    """Load a registered version (default: `champion`, else the latest) or the model of a run."""
    if version is not None and run_id is not None:
        raise ValueError("give either a model version or a run id, not both")
    configure_mlflow(cfg, workspace)
    name = cfg.tracking.registered_model
    if run_id is not None:
        try:
            MlflowClient().get_run(run_id)
        except MlflowException:
            raise ModelNotFoundError(f"no MLflow run {run_id!r} in this workspace") from None
        try:
            model, spec = _load_from_uri(f"runs:/{run_id}/model")
        except MlflowException as err:
            raise ModelNotFoundError(f"run {run_id} has no logged model: {err.message}") from None
        return LoadedModel(model, spec, f"model of run {run_id}", run_id=run_id)

    client = MlflowClient()
    chosen, reason = choose_version(client, name, version)
    model, spec = _load_from_uri(f"models:/{name}/{chosen}")
    run = client.get_model_version(name, chosen).run_id
    return LoadedModel(model, spec, f"{name} version {chosen} ({reason})", chosen, run)


def select_split(
    store: DatasetStore, workspace: Workspace, split: str, dataset_version: str | None
) -> tuple[pd.DataFrame, str]:
    """Return the rows of `split` ("all" for every row) and a description of the data used.

    Without `dataset_version` the current `data/` is used; with it, that version's metadata. Raises
    `ValueError` for an unknown split, an empty selection or images missing from `data/images`.
    """
    from ladnn.data.operations import find_version, read_version_metadata

    if split not in SPLIT_CHOICES:
        raise ValueError(f"invalid split {split!r}: expected one of {list(SPLIT_CHOICES)}")
    if dataset_version is None:
        frame = store.read_metadata()
        source = f"current data in {store.data_dir}"
    else:
        version = find_version(workspace, dataset_version)
        frame = read_version_metadata(workspace, version)
        source = f"dataset version {version.name}"
    if split != "all":
        frame = frame[frame["split"] == split]
    frame = frame.reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"split {split!r} of the {source} has no images")
    missing = [
        image_id for image_id in frame["image_id"] if not store.image_path(image_id).is_file()
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) of the {source} are missing from {store.images_dir} "
            f"(e.g. {missing[0]}.png): check out the data with `dvc checkout` first"
        )
    return frame, source


@dataclass
class SplitEvaluation:
    result: EvaluationResult
    slices: pd.DataFrame
    probabilities: np.ndarray
    # Messages of the warnings raised while computing, e.g. slices with a single class.
    notes: list[str]


def evaluate_split(
    loaded: LoadedModel,
    store: DatasetStore,
    frame: pd.DataFrame,
    split: str,
    cache_dir: Path,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> SplitEvaluation:
    """Score `frame` with the model and compute the metrics, CI and slices at its own threshold."""
    cache = ImageCache(store, cache_dir, int(loaded.spec["image_size"]))
    pixels = cache.get(frame["image_id"].tolist())
    probabilities = predict(
        loaded.model,
        pixels,
        tuple(loaded.spec["mean"]),
        tuple(loaded.spec["std"]),
        tta=bool(loaded.spec.get("tta", False)),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_probabilities(
            frame,
            probabilities,
            threshold=loaded.threshold,
            split=split,
            n_resamples=n_resamples,
            seed=seed,
        )
        slices = evaluate_slices(frame, probabilities, loaded.threshold)
    notes = list(dict.fromkeys(str(item.message) for item in caught))
    return SplitEvaluation(result, slices, probabilities, notes)


@dataclass
class Diagnosis:
    # Sigmoid probability per output name; lesions are absent for the "baseline" variant.
    probabilities: dict[str, float]
    threshold: float

    @property
    def covid_probability(self) -> float:
        return self.probabilities["covid"]

    @property
    def positive(self) -> bool:
        return self.covid_probability >= self.threshold


def diagnose_image(loaded: LoadedModel, path: Path) -> Diagnosis:
    """Score one image file as the pyfunc model does.

    Raises `OSError` when the file cannot be read and `ImageDecodeError` (a `ValueError`) naming the
    file when it is empty, truncated or not an image.
    """
    normalised = normalise_image(path.read_bytes(), str(path))
    pixels = load_image_tensor(normalised.image, int(loaded.spec["image_size"])).unsqueeze(0)
    row = predict(
        loaded.model,
        pixels,
        tuple(loaded.spec["mean"]),
        tuple(loaded.spec["std"]),
        tta=bool(loaded.spec.get("tta", False)),
    )[0]
    names = OUTPUT_NAMES[: len(row)]
    return Diagnosis(
        {name: float(value) for name, value in zip(names, row, strict=True)}, loaded.threshold
    )


def lesion_names(loaded: LoadedModel) -> tuple[str, ...]:
    """Lesion outputs of the model: the five lesions for "ladnn", none for "baseline"."""
    return tuple(LESIONS) if loaded.model.lesion_head is not None else ()
