"""One tracked training run: train on a dataset version, evaluate, and log everything to MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml

from ladnn.config import LadnnCfg, config_to_dict, resume_identity
from ladnn.data.lesions import LESIONS
from ladnn.data.store import DatasetStore, atomic_write_bytes
from ladnn.data.versioning import DatasetVersion
from ladnn.evaluation.calibration import save_reliability_diagram
from ladnn.evaluation.explain import save_split_overlays
from ladnn.evaluation.metrics import choose_threshold
from ladnn.evaluation.plots import save_evaluation_plots, save_lesion_pair_plot
from ladnn.evaluation.report import EvaluationResult, evaluate_probabilities, evaluate_slices
from ladnn.tracking.pyfunc import log_pyfunc_model
from ladnn.tracking.redact import redact_secrets
from ladnn.tracking.registry import git_commit
from ladnn.tracking.store import configure_mlflow
from ladnn.training.distributed import release_other_ranks, setup_distributed, wait_for_rank_zero
from ladnn.training.images import ImageCache
from ladnn.training.trainer import SplitData, TrainOutcome, predict, prepare_split, train_model
from ladnn.workspace import Workspace

__all__ = ["TrainingRun", "run_training", "flatten_config", "previous_run_id"]

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    run_id: str
    model_uri: str
    threshold: float
    best_epoch: int
    train_seconds: float
    pretrained: bool
    weights_source: str
    dataset_version: str
    validation: EvaluationResult
    test: EvaluationResult
    tags: dict[str, str] = field(default_factory=dict)


def flatten_config(values: dict, prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _run_key(
    cfg: LadnnCfg, version: DatasetVersion, train_ids: set[str] | None, tags: dict[str, str] | None
) -> str:
    """Identify a run by configuration, dataset, training subset and origin, for `--resume`."""
    subset = sorted(train_ids) if train_ids is not None else None
    text = json.dumps(
        {
            "config": resume_identity(cfg),
            "dataset": version.md5,
            "train_ids": subset,
            "tags": tags,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _input_example(store: DatasetStore, frame: pd.DataFrame) -> pd.DataFrame:
    image_id = frame["image_id"].iloc[0]
    return pd.DataFrame({"image": [store.image_path(image_id).read_bytes()]})


def _log_gradcam(
    outcome: TrainOutcome, store: DatasetStore, frame: pd.DataFrame, image_size: int, folder: Path
) -> None:
    """Log Grad-CAM++ overlays of two COVID and two negative images under `gradcam/`.

    A failure is logged and tagged but does not fail the run, because the model is still valid.
    """
    try:
        paths = save_split_overlays(
            outcome.model, outcome.backbone.spec, store, frame, folder, image_size=image_size
        )
    except (ValueError, RuntimeError, OSError) as err:
        logger.warning("Grad-CAM++ overlays failed, none logged: %s", err)
        mlflow.set_tag("gradcam_error", str(err)[:500])
        return
    if paths:
        mlflow.log_artifacts(str(folder), "gradcam")


def previous_run_id(checkpoint: Path, run_file: Path, *, resume: bool) -> str | None:
    """Return the MLflow run id to continue when resuming from `checkpoint`, else None.

    Without `resume`, a checkpoint left by an earlier run is deleted so that training starts over.
    """
    if resume and run_file.is_file() and checkpoint.is_file():
        return json.loads(run_file.read_text())["run_id"]
    if not resume:
        checkpoint.unlink(missing_ok=True)
    return None


def _initialisation(cfg: LadnnCfg, initial_state: dict | None) -> str:
    """Name where the run's weights start: a given state (the champion's), a weights file such as
    one from `ladnn pretrain`, ImageNet, or random weights."""
    if initial_state is not None:
        return "checkpoint"
    if not cfg.model.pretrained:
        return "random"
    return "weights-file" if cfg.model.weights_file else "imagenet"


def _save_figures(
    labels: dict[str, np.ndarray],
    probabilities: dict[str, np.ndarray],
    threshold: float,
    folder: Path,
    *,
    lesions: bool,
) -> None:
    """Write the figures of the validation and test splits into `folder`.

    Each split gets its ROC, precision-recall, confusion and reliability figures; with `lesions`
    the test split also gets the lesion pair plot.
    """
    for split, y_true in labels.items():
        covid = probabilities[split][:, 0]
        save_evaluation_plots(y_true, covid, threshold, folder, split)
        save_reliability_diagram(
            y_true, covid, folder / f"{split}_reliability.png", title=f"Reliability ({split})"
        )
    if lesions:
        save_lesion_pair_plot(
            labels["test"],
            probabilities["test"][:, 1:],
            LESIONS,
            folder / "test_lesion_pairs.png",
            title="Lesion probabilities by COVID-19 label (test)",
        )


def run_training(
    cfg: LadnnCfg,
    workspace: Workspace,
    store: DatasetStore,
    version: DatasetVersion,
    *,
    resume: bool = False,
    validation_id: str | None = None,
    run_name: str | None = None,
    progress: bool = True,
    initial_state: dict | None = None,
    train_ids: set[str] | None = None,
    extra_tags: dict[str, str] | None = None,
    image_ids: set[str] | None = None,
) -> TrainingRun | None:
    """Train LA-DNN on `version` and log config, per-epoch and final metrics, plots and the model.

    The threshold is chosen on the validation split and frozen before the test split is scored.
    With `resume=True` an interrupted run with the same configuration and dataset continues from
    its last epoch checkpoint, in the same MLflow run.

    Under `torchrun` every process trains its share with DistributedDataParallel. Rank 0 alone
    logs to MLflow, writes checkpoints, evaluates and returns the run; the other ranks return
    None once training ends. `image_ids` restricts every split to
    those images, for example to the images of an older dataset version.
    """
    context = setup_distributed(cfg.train.device)
    is_main = context is None or context.is_main
    if is_main:
        configure_mlflow(cfg, workspace)
    # Rank 0 fills the image cache before the other ranks read it.
    wait_for_rank_zero(context)
    frame = store.read_metadata()
    if image_ids is not None:
        frame = frame[frame["image_id"].isin(image_ids)]
    cache = ImageCache(store, workspace.cache_dir, cfg.train.image_size)
    lesion_free = cfg.loss.negatives_lesion_free
    selected = {split: frame[frame["split"] == split] for split in ("train", "val", "test")}
    if train_ids is not None:
        selected["train"] = selected["train"][selected["train"]["image_id"].isin(train_ids)]
    splits: dict[str, SplitData] = {
        split: prepare_split(rows, cache, negatives_lesion_free=lesion_free)
        for split, rows in selected.items()
    }
    release_other_ranks(context)
    if not is_main:
        train_model(
            cfg, splits["train"], splits["val"], progress=False, initial_state=initial_state
        )
        return None

    key = _run_key(cfg, version, train_ids, extra_tags)
    checkpoint = workspace.checkpoints_dir / f"{key}.pt"
    run_file = workspace.checkpoints_dir / f"{key}.run.json"
    previous_run = previous_run_id(checkpoint, run_file, resume=resume)

    tags = {
        "dataset_version": version.name,
        "dataset_md5": version.md5,
        # Every validation that admitted a batch of this dataset version, oldest first.
        # NOTE: MLflow cuts tag values at 8000 characters, so after about 180 batches this tag
        # would lose its newest ids; the dataset version's record keeps them all.
        "validation_result_id": validation_id or ",".join(version.validation_ids) or "none",
        "backbone": cfg.model.backbone,
        "variant": cfg.model.variant,
        "profile": cfg.profile,
        "git_commit": git_commit(),
        "initialisation": _initialisation(cfg, initial_state),
        **(extra_tags or {}),
    }
    with mlflow.start_run(run_id=previous_run, run_name=run_name) as run:
        atomic_write_bytes(run_file, json.dumps({"run_id": run.info.run_id}).encode())
        # URL passwords and secret-named settings never reach the tracking store or the disk.
        logged_config = redact_secrets(config_to_dict(cfg))
        # The saved settings name the dataset folder this run read, even when it was the default.
        logged_config["data"]["root"] = str(store.root.resolve())
        if previous_run is None:
            mlflow.set_tags(tags)
            mlflow.log_params(flatten_config(logged_config))
            mlflow.log_dict(logged_config, "config.yaml")
            mlflow.log_params(
                {f"dataset.{name}": value for name, value in version.counts.items()}
                | {"dataset.n_images": version.n_images}
            )
        local_run_dir = workspace.runs_dir / run.info.run_id
        local_run_dir.mkdir(parents=True, exist_ok=True)
        (local_run_dir / "config.yaml").write_text(yaml.safe_dump(logged_config, sort_keys=False))

        def log_epoch(record: dict[str, float]) -> None:
            # Per-epoch curves are prefixed, so `val_auc` names only the chosen epoch's result.
            step = int(record["epoch"])
            mlflow.log_metrics(
                {f"epoch_{k}": v for k, v in record.items() if k != "epoch"}, step=step
            )

        outcome: TrainOutcome = train_model(
            cfg,
            splits["train"],
            splits["val"],
            checkpoint_path=checkpoint,
            resume=previous_run is not None,
            on_epoch=log_epoch,
            progress=progress,
            initial_state=initial_state,
        )
        mean, std = outcome.backbone.spec.mean, outcome.backbone.spec.std
        probabilities = {
            split: predict(
                outcome.model, data.pixels, mean, std, device=outcome.device, tta=cfg.eval.tta
            )
            for split, data in splits.items()
            if split != "train"
        }
        val_y = splits["val"].frame["label"].to_numpy()
        threshold = (
            cfg.eval.fixed_threshold
            if cfg.eval.threshold_rule == "fixed"
            else choose_threshold(
                val_y,
                probabilities["val"][:, 0],
                cfg.eval.threshold_rule,
                cfg.eval.target_sensitivity,
            )
        )
        results = {
            split: evaluate_probabilities(
                splits[split].frame,
                probabilities[split],
                threshold=threshold,
                split=split,
                n_resamples=cfg.eval.bootstrap,
                seed=cfg.eval.seed,
            )
            for split in ("val", "test")
        }
        mlflow.log_metrics(results["val"].flat() | results["test"].flat())
        mlflow.log_metrics(
            {
                "threshold": threshold,
                "best_epoch": outcome.best_epoch,
                "train_seconds": outcome.train_seconds,
            }
        )
        mlflow.set_tags(
            {
                "pretrained": str(outcome.backbone.pretrained).lower(),
                "weights_source": outcome.backbone.weights_source,
                "device": outcome.device,
                "precision": outcome.precision,
                "training_processes": str(context.world_size if context is not None else 1),
            }
        )
        if not outcome.backbone.pretrained:
            mlflow.set_tag("warning", "backbone trained from random weights (not pretrained)")

        with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(1) as painter:
            scratch_dir = Path(scratch)
            for split in ("val", "test"):
                data = splits[split]
                predictions = data.frame[["image_id", "file_name", "patient_id", "label"]].copy()
                predictions["covid_probability"] = probabilities[split][:, 0]
                predictions.to_csv(scratch_dir / f"predictions_{split}.csv", index=False)
                mlflow.log_artifact(str(scratch_dir / f"predictions_{split}.csv"), "predictions")
                # Single-class slices (every COVID source) are expected; their AUC is NaN in the CSV.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    slices = evaluate_slices(data.frame, probabilities[split], threshold)
                slices.to_csv(scratch_dir / f"slices_{split}.csv", index=False)
                mlflow.log_artifact(str(scratch_dir / f"slices_{split}.csv"), "slices")
            # The figures render in a thread beside the Grad-CAM++ overlays, whose convolutions
            # release the GIL. The slices are scored first because `warnings.catch_warnings`,
            # which they and matplotlib's `set_xticklabels` use, is not thread-safe.
            figures = painter.submit(
                _save_figures,
                {split: splits[split].frame["label"].to_numpy() for split in ("val", "test")},
                probabilities,
                threshold,
                scratch_dir / "plots",
                lesions=cfg.model.variant == "ladnn",
            )
            _log_gradcam(
                outcome, store, splits["test"].frame, cfg.train.image_size, scratch_dir / "gradcam"
            )
            spec = {
                "backbone": cfg.model.backbone,
                "variant": cfg.model.variant,
                "image_size": cfg.train.image_size,
                "mean": list(mean),
                "std": list(std),
                "threshold": threshold,
                "tta": cfg.eval.tta,
                "dataset_version": version.name,
            }
            info = log_pyfunc_model(
                outcome.model.cpu(),
                spec,
                scratch_dir / "model_files",
                _input_example(store, splits["test"].frame),
            )
            figures.result()
            mlflow.log_artifacts(str(scratch_dir / "plots"), "plots")

    checkpoint.unlink(missing_ok=True)
    run_file.unlink(missing_ok=True)
    return TrainingRun(
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        threshold=threshold,
        best_epoch=outcome.best_epoch,
        train_seconds=outcome.train_seconds,
        pretrained=outcome.backbone.pretrained,
        weights_source=outcome.backbone.weights_source,
        dataset_version=version.name,
        validation=results["val"],
        test=results["test"],
        tags=tags,
    )
