"""Self-supervised contrastive pretraining of a backbone on the dataset's own images.

The method is SimCLR's (Chen et al. 2020). Two random views of each image pass through the backbone
and a small projection head. The NT-Xent loss pulls the two views of an image together and pushes
the other images of the batch away, so labels are never read. Training starts from the configured
weights (ImageNet where available), as Self-Trans (He et al. 2020) continued from ImageNet on CT
images. The backbone's weights, without the projection head, are written as a safetensors file that
`model.weights_file` loads for supervised training.

A linear probe measures what the features carry: a logistic regression fitted on the frozen
features of the training split, scored by its COVID-19 AUC on the validation split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm import tqdm

from ladnn.config import LadnnCfg
from ladnn.data.store import DatasetStore, atomic_write_bytes
from ladnn.data.versioning import DatasetVersion
from ladnn.models.backbones import create_backbone
from ladnn.training.images import augment_batch, to_model_input
from ladnn.training.trainer import (
    configure_threads,
    save_checkpoint,
    select_device,
    training_precision,
)
from ladnn.workspace import Workspace

__all__ = [
    "ContrastiveCfg",
    "PretrainOutcome",
    "ProbeData",
    "nt_xent_loss",
    "contrastive_views",
    "linear_probe_auc",
    "pretrain_backbone",
    "pretraining_key",
    "run_pretraining",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContrastiveCfg:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    # NT-Xent temperature: lower values weigh the hardest negatives more.
    temperature: float = 0.2
    image_size: int = 160
    projection_dim: int = 128
    # Views zoom in by up to this factor, so a view shows 1 / zoom**2 of the image or more.
    max_zoom: float = 1.8
    translate: float = 0.15
    rotate_degrees: float = 10.0
    intensity_jitter: float = 0.3
    # Score the linear probe every this many epochs (and before the first); 0 turns it off.
    probe_every: int = 5
    # Weights to write: those of the epoch with the best probe AUC (the last epoch when no probe
    # runs), or the last epoch's.
    keep: Literal["best_probe", "last"] = "best_probe"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size must be at least 2 for the views to have negatives, got "
                f"{self.batch_size}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.max_zoom < 1:
            raise ValueError(f"max_zoom must be at least 1, got {self.max_zoom}")
        if self.keep not in ("best_probe", "last"):
            raise ValueError(f"keep must be 'best_probe' or 'last', got {self.keep!r}")


@dataclass
class ProbeData:
    """Images and COVID-19 labels that the linear probe fits on (`train`) and scores on (`val`)."""

    train_pixels: torch.Tensor
    train_labels: np.ndarray
    val_pixels: torch.Tensor
    val_labels: np.ndarray


@dataclass
class PretrainOutcome:
    weights_path: Path
    history: list[dict[str, float]]
    seconds: float
    precision: str
    weights_source: str
    # Epoch whose weights were written; 0 means the starting weights scored the best probe.
    kept_epoch: int


def nt_xent_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Compute the NT-Xent loss of two batches of projections, where row i of each is a view of
    image i.

    Each of the 2N projections has its other view as the positive and the remaining 2N - 2
    projections as negatives. The loss is the mean cross-entropy over the 2N rows.
    """
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(
            f"projections of shapes {tuple(first.shape)} and {tuple(second.shape)} do not pair up"
        )
    count = first.shape[0]
    projections = F.normalize(torch.cat([first, second]).float(), dim=1)
    similarity = projections @ projections.T / temperature
    similarity.fill_diagonal_(-math.inf)
    positives = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])
    return F.cross_entropy(similarity, positives.to(similarity.device))


def contrastive_views(
    pixels: torch.Tensor, generator: torch.Generator, settings: ContrastiveCfg
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment grey uint8 pixels (N, 1, H, W) twice, independently, into float views in [0, 255]."""

    def view() -> torch.Tensor:
        return augment_batch(
            pixels,
            generator,
            scale=(1.0, settings.max_zoom),
            hflip=True,
            rotate_degrees=settings.rotate_degrees,
            translate=settings.translate,
            intensity_jitter=settings.intensity_jitter,
        )

    return view(), view()


@torch.no_grad()
def _features(
    backbone: nn.Module,
    pixels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    was_training = backbone.training
    backbone.eval()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        inputs = to_model_input(pixels[start : start + batch_size].to(device), mean, std)
        chunks.append(backbone(inputs.contiguous(memory_format=torch.channels_last)).float().cpu())
    backbone.train(was_training)
    return torch.cat(chunks).numpy()


def linear_probe_auc(
    backbone: nn.Module,
    probe: ProbeData,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> float:
    """Validation AUC of a logistic regression on the backbone's frozen pooled features."""
    if len(np.unique(probe.val_labels)) < 2 or len(np.unique(probe.train_labels)) < 2:
        return math.nan
    train = _features(backbone, probe.train_pixels, mean, std, device)
    val = _features(backbone, probe.val_pixels, mean, std, device)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    classifier.fit(train, probe.train_labels)
    return float(roc_auc_score(probe.val_labels, classifier.predict_proba(val)[:, 1]))


def _identity(cfg: LadnnCfg, settings: ContrastiveCfg, image_ids: list[str]) -> dict:
    return {
        "backbone": cfg.model.backbone,
        "pretrained": cfg.model.pretrained,
        "weights_file": cfg.model.weights_file,
        "seed": cfg.train.seed,
        "settings": asdict(settings),
        "images": hashlib.sha256("\n".join(image_ids).encode()).hexdigest(),
    }


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain_backbone(
    cfg: LadnnCfg,
    settings: ContrastiveCfg,
    pixels: torch.Tensor,
    image_ids: list[str],
    output: Path,
    *,
    probe: ProbeData | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
) -> PretrainOutcome:
    """Pretrain `cfg.model.backbone` contrastively on `pixels` and write its weights to `output`.

    `pixels` contains grey uint8 images (N, 1, S, S) at `settings.image_size`, and `image_ids` names
    them, so that a checkpoint resumes only on the same images. With `checkpoint_path` the state
    is saved after every epoch, and `resume=True` continues from it. The device, thread count,
    seed and precision come from `cfg.train`.
    """
    if len(pixels) < settings.batch_size:
        raise ValueError(
            f"{len(pixels)} images are fewer than one batch of {settings.batch_size}: import more "
            "images or lower the batch size"
        )
    configure_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    device = select_device(cfg.train.device)
    precision = training_precision(cfg.train.precision, device)
    loaded = create_backbone(
        cfg.model.backbone,
        pretrained=cfg.model.pretrained,
        weights_file=cfg.model.weights_file or None,
    )
    backbone = loaded.module.to(device=device, memory_format=torch.channels_last)
    projector = nn.Sequential(
        nn.Linear(loaded.num_features, loaded.num_features),
        nn.ReLU(inplace=True),
        nn.Linear(loaded.num_features, settings.projection_dim),
    ).to(device)
    mean, std = loaded.spec.mean, loaded.spec.std
    parameters = [*backbone.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    # The last batch is dropped, so every step has a full set of negatives.
    steps_per_epoch = len(pixels) // settings.batch_size
    scheduler = _schedule(optimizer, settings.epochs * steps_per_epoch, steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    identity = _identity(cfg, settings, image_ids)

    start_epoch, history = 0, []
    best_probe, best_epoch, best_state = -math.inf, 0, None
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if json.loads(state["identity"]) != identity:
            raise ValueError(
                f"checkpoint {checkpoint_path} was written for other settings or images; "
                "resume with the same ones or start without --resume"
            )
        backbone.load_state_dict(state["backbone"])
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, history = state["epoch"], json.loads(state["history"])
        best_probe, best_epoch = state["best_probe"], state["best_epoch"]
        best_state = state["best_state"]
        logger.info("resumed pretraining from %s after epoch %d", checkpoint_path, start_epoch)

    def probe_record(epoch: int) -> dict[str, float]:
        if probe is None or not settings.probe_every:
            return {}
        if epoch and epoch % settings.probe_every and epoch != settings.epochs:
            return {}
        return {"probe_val_auc": linear_probe_auc(backbone, probe, mean, std, device)}

    def remember_if_best(record: dict[str, float]) -> None:
        nonlocal best_probe, best_epoch, best_state
        score = record.get("probe_val_auc", math.nan)
        if settings.keep == "best_probe" and score > best_probe:
            best_probe, best_epoch = score, int(record["epoch"])
            best_state = {
                name: tensor.detach().cpu().clone()
                for name, tensor in backbone.state_dict().items()
            }

    started = time.perf_counter()
    if start_epoch == 0 and (before := probe_record(0)):
        history.append({"epoch": 0, **before})
        remember_if_best(history[-1])
        if on_epoch is not None:
            on_epoch(history[-1])
    for epoch in range(start_epoch + 1, settings.epochs + 1):
        backbone.train()
        projector.train()
        order = torch.randperm(len(pixels), generator=generator)
        epoch_loss, seen, epoch_start = 0.0, 0, time.perf_counter()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"pretrain {epoch}/{settings.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for step in bar:
            index = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            first, second = contrastive_views(pixels[index], generator, settings)
            inputs = to_model_input(torch.cat([first, second]).to(device), mean, std)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                projections = projector(backbone(inputs))
            count = len(index)
            loss = nt_xent_loss(projections[:count], projections[count:], settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * count
            seen += count
            bar.set_postfix(
                loss=f"{epoch_loss / seen:.4f}",
                img_s=f"{2 * seen / (time.perf_counter() - epoch_start):.1f}",
            )
        record = {
            "epoch": epoch,
            "loss": epoch_loss / seen,
            "lr": optimizer.param_groups[0]["lr"],
            "views_per_second": 2 * seen / (time.perf_counter() - epoch_start),
            **probe_record(epoch),
        }
        history.append(record)
        remember_if_best(record)
        logger.info(
            "pretrain epoch %d/%d: loss %.4f%s",
            epoch,
            settings.epochs,
            record["loss"],
            f", probe validation AUC {record['probe_val_auc']:.3f}"
            if "probe_val_auc" in record
            else "",
        )
        if on_epoch is not None:
            on_epoch(record)
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "identity": json.dumps(identity),
                    "backbone": backbone.state_dict(),
                    "projector": projector.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "history": json.dumps(history),
                    "best_probe": best_probe,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                },
            )

    kept_epoch = settings.epochs
    weights = {
        name: tensor.detach().cpu().contiguous() for name, tensor in backbone.state_dict().items()
    }
    if best_state is not None:
        kept_epoch = best_epoch
        weights = {name: tensor.contiguous() for name, tensor in best_state.items()}
        logger.info(
            "keeping the weights of epoch %d, the best linear probe (validation AUC %.3f)",
            best_epoch,
            best_probe,
        )
        if best_epoch == 0:
            logger.warning(
                "the starting weights scored the best linear probe, so the weights file "
                "contains them unchanged"
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed over it, so a reader never sees half a file.
    scratch = output.with_name(f".{output.name}.tmp")
    save_file(weights, str(scratch), metadata={"backbone": cfg.model.backbone, "method": "simclr"})
    os.replace(scratch, output)
    return PretrainOutcome(
        weights_path=output,
        history=history,
        seconds=time.perf_counter() - started,
        precision=precision,
        weights_source=loaded.weights_source,
        kept_epoch=kept_epoch,
    )


def pretraining_key(cfg: LadnnCfg, settings: ContrastiveCfg, image_ids: list[str]) -> str:
    """Short hash of the backbone, settings and images: names the weights file and checkpoint."""
    text = json.dumps(_identity(cfg, settings, image_ids), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_pretraining(
    cfg: LadnnCfg,
    workspace: Workspace,
    store: DatasetStore,
    version: DatasetVersion,
    settings: ContrastiveCfg,
    *,
    output: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[PretrainOutcome, str]:
    """Pretrain on the training split of `version` and log the run to MLflow.

    The run goes to the experiment `<tracking.experiment>-pretraining`, so that it never mixes
    with the supervised runs that the review compares. Return the outcome and the run id. The
    weights go to `output`, by default `<workspace>/pretrained/<backbone>-simclr-<version>-<key>
    .safetensors`.
    """
    import mlflow

    from ladnn.tracking.store import configure_mlflow
    from ladnn.training.images import ImageCache
    from ladnn.training.run import previous_run_id

    frame = store.read_metadata()
    cache = ImageCache(store, workspace.cache_dir, settings.image_size)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    val = frame[frame["split"] == "val"].reset_index(drop=True)
    if train.empty:
        raise ValueError(
            f"dataset version {version.name} has no training images to pretrain on: import data "
            "with train images first"
        )
    image_ids = train["image_id"].tolist()
    pixels = cache.get(image_ids)
    probe = (
        ProbeData(
            train_pixels=pixels,
            train_labels=train["label"].to_numpy(),
            val_pixels=cache.get(val["image_id"].tolist()),
            val_labels=val["label"].to_numpy(),
        )
        if not val.empty
        else None
    )
    key = pretraining_key(cfg, settings, image_ids)
    output = output or (
        workspace.root
        / "pretrained"
        / f"{cfg.model.backbone}-simclr-{version.name}-{key}.safetensors"
    )
    checkpoint = workspace.checkpoints_dir / f"pretrain-{key}.pt"
    run_file = workspace.checkpoints_dir / f"pretrain-{key}.run.json"
    previous_run = previous_run_id(checkpoint, run_file, resume=resume)

    tracking = replace(cfg.tracking, experiment=f"{cfg.tracking.experiment}-pretraining")
    configure_mlflow(replace(cfg, tracking=tracking), workspace)
    with mlflow.start_run(run_id=previous_run, run_name=f"simclr-{cfg.model.backbone}") as run:
        atomic_write_bytes(run_file, json.dumps({"run_id": run.info.run_id}).encode())
        if previous_run is None:
            mlflow.set_tags(
                {
                    "kind": "contrastive-pretraining",
                    "method": "simclr",
                    "backbone": cfg.model.backbone,
                    "dataset_version": version.name,
                    "dataset_md5": version.md5,
                }
            )
            mlflow.log_params(
                {f"pretrain.{name}": value for name, value in asdict(settings).items()}
                | {
                    "model.backbone": cfg.model.backbone,
                    "model.pretrained": cfg.model.pretrained,
                    "model.weights_file": cfg.model.weights_file,
                    "train.seed": cfg.train.seed,
                    "n_images": len(image_ids),
                }
            )

        def log_epoch(record: dict[str, float]) -> None:
            step = int(record["epoch"])
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=step)

        outcome = pretrain_backbone(
            cfg,
            settings,
            pixels,
            image_ids,
            output,
            probe=probe,
            checkpoint_path=checkpoint,
            resume=previous_run is not None,
            on_epoch=log_epoch,
            progress=progress,
        )
        mlflow.set_tags(
            {
                "weights_file": str(output.resolve()),
                "start_weights": outcome.weights_source,
                "precision": outcome.precision,
            }
        )
        mlflow.log_metrics({"pretrain_seconds": outcome.seconds, "kept_epoch": outcome.kept_epoch})
        mlflow.log_artifact(str(output), "weights")
    checkpoint.unlink(missing_ok=True)
    run_file.unlink(missing_ok=True)
    return outcome, run.info.run_id
