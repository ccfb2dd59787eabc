"""Training loop: seeded, checkpointed every epoch, resumable, best epoch chosen on validation AUC."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from ladnn.config import LadnnCfg, config_to_dict, resume_identity, without_run_limits
from ladnn.data.lesions import LESIONS
from ladnn.evaluation.metrics import roc_auc
from ladnn.models.backbones import LoadedBackbone, freeze_stages
from ladnn.models.ladnn import LADNN, build_model, ladnn_loss
from ladnn.training.distributed import (
    DistributedContext,
    broadcast_object,
    current_context,
    gather_rows,
    sum_across,
)
from ladnn.training.images import ImageCache, augment_batch, to_model_input

__all__ = [
    "SplitData",
    "TrainOutcome",
    "TrainingTimeout",
    "prepare_split",
    "train_model",
    "predict",
    "select_device",
    "training_precision",
    "configure_threads",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

# The clock that `train.timeout_minutes` is measured with.
_clock = time.monotonic


@dataclass
class SplitData:
    frame: pd.DataFrame
    pixels: torch.Tensor
    covid: torch.Tensor
    # (N, 5) float: 0, 1 or NaN for unknown.
    lesions: torch.Tensor

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class TrainOutcome:
    model: LADNN
    backbone: LoadedBackbone
    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    device: str = "cpu"
    precision: str = "float32"


def prepare_split(
    frame: pd.DataFrame, cache: ImageCache, *, negatives_lesion_free: bool = False
) -> SplitData:
    frame = frame.reset_index(drop=True)
    lesions = frame[list(LESIONS)].astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan)
    if negatives_lesion_free:
        negative = (frame["label"] == 0).to_numpy()
        lesions[negative] = np.nan_to_num(lesions[negative], nan=0.0)
    return SplitData(
        frame=frame,
        pixels=cache.get(frame["image_id"].tolist()),
        covid=torch.tensor(frame["label"].to_numpy(), dtype=torch.float32),
        lesions=torch.from_numpy(lesions),
    )


def select_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def _has_bfloat16_units() -> bool:
    """Return whether this CPU computes bfloat16 products in hardware: AMX tiles or AVX512-BF16."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def training_precision(choice: str, device: torch.device) -> str:
    """Resolve `train.precision` for `device`: "float32" or "bfloat16"."""
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    # bfloat16 autocast trained EfficientNet-Lite0 1.38 times as fast on an AMD host with
    # AVX512-BF16 and no AMX, and ResNet-18 about twice as fast with AMX (docs/benchmarks.md).
    return "bfloat16" if _has_bfloat16_units() else "float32"


def configure_threads(threads: int, context: DistributedContext | None = None) -> None:
    count = threads or os.cpu_count() or 1
    if context is not None and not threads:
        # The processes of one machine share its cores.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", context.world_size))
        count = max(1, count // local_processes)
    torch.set_num_threads(count)


def _training_device(choice: str, context: DistributedContext | None) -> torch.device:
    device = select_device(choice)
    if context is not None and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def _wrap_distributed(
    model: LADNN, device: torch.device, context: DistributedContext | None, sync_batchnorm: bool
) -> tuple[LADNN, torch.nn.Module]:
    """Return the model and the module that the training step calls: the model itself, or its
    DistributedDataParallel wrapper, which averages gradients over the ranks in `backward`."""
    if context is None:
        return model, model
    if device.type == "cuda" and sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    wrapper = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return model, wrapper


def _freeze_batchnorm(model: torch.nn.Module, *, all_layers: bool) -> None:
    """Put batch-norm layers in eval mode, where they normalise with their running statistics.

    With `all_layers` every layer stops updating its statistics, while its scale and shift still
    train. Otherwise only the layers of frozen stages, whose parameters do not require gradients,
    go to eval mode.
    """
    for module in model.modules():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            continue
        parameters = list(module.parameters(recurse=False))
        if all_layers or (parameters and not any(p.requires_grad for p in parameters)):
            module.eval()


def _sync_buffers(model: torch.nn.Module, context: DistributedContext | None) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank before scoring."""
    if context is None:
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def _predict_sharded(
    model: LADNN,
    pixels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    context: DistributedContext | None,
    **kwargs,
) -> np.ndarray:
    """Score every image, each rank a strided share, and return all rows in order on every rank."""
    if context is None:
        return predict(model, pixels, mean, std, **kwargs)
    share = predict(model, pixels[context.rank :: context.world_size], mean, std, **kwargs)
    parts = gather_rows(share, context)
    rows = np.empty((len(pixels), share.shape[1]), dtype=share.dtype)
    for rank, part in enumerate(parts):
        rows[rank :: context.world_size] = part
    return rows


@torch.no_grad()
def predict(
    model: LADNN,
    pixels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    tta: bool = False,
) -> np.ndarray:
    """Return sigmoid probabilities of shape (N, outputs) for grey uint8 pixels (N, 1, H, W).

    With `tta`, each probability is the mean over the image and its horizontal mirror.
    """
    model.eval()
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = to_model_input(pixels[start : start + batch_size].to(device), mean, std)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        probabilities = torch.sigmoid(model(batch).float())
        if tta:
            mirrored = torch.sigmoid(model(torch.flip(batch, dims=[3])).float())
            probabilities = (probabilities + mirrored) / 2
        outputs.append(probabilities.cpu())
    if not outputs:
        return np.empty((0, 1 if model.lesion_head is None else 1 + len(LESIONS)), dtype=np.float32)
    return torch.cat(outputs).numpy()


def _make_optimizer(model: LADNN, cfg: LadnnCfg) -> torch.optim.Optimizer:
    train = cfg.train
    parameters = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)


def _make_scheduler(optimizer, cfg: LadnnCfg, steps_per_epoch: int):
    train = cfg.train
    total = max(1, train.epochs * steps_per_epoch)
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=total, pct_start=_warmup_fraction(total)
        )
    if train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class TrainingTimeout(TimeoutError):
    """Training ran longer than `train.timeout_minutes`."""


def _timeout_message(cfg: LadnnCfg, epochs_done: int, checkpoint_path: Path | None) -> str:
    kept = (
        f"; the checkpoint after epoch {epochs_done} is kept in {checkpoint_path}, and the same "
        "command with --resume continues from it"
        if checkpoint_path is not None and epochs_done
        else ""
    )
    return (
        f"training stopped after {cfg.train.timeout_minutes:g} min "
        f"(train.timeout_minutes) with {epochs_done} of {cfg.train.epochs} epochs done{kept}"
    )


def _warmup_fraction(total_steps: int, fraction: float = 0.2) -> float:
    """Return the one-cycle warm-up fraction, moved off the values where OneCycleLR fails.

    OneCycleLR ends the warm-up at step `fraction * total_steps - 1` and divides by the length of
    each phase, so a warm-up ending at step 0 (5 steps at 0.2) raises ZeroDivisionError. Such a
    run warms up for one step instead.
    """
    if math.isclose(fraction * total_steps, 1.0):
        return 2.0 / total_steps
    return fraction


def save_checkpoint(path: Path, state: dict) -> None:
    """Write through a unique temporary file, flushed to disk, then rename it over `path`.

    A process killed at any moment leaves either the previous checkpoint or the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Remove temporary files left by a process killed while writing this checkpoint.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def train_model(
    cfg: LadnnCfg,
    train: SplitData,
    val: SplitData,
    *,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> TrainOutcome:
    """Train LA-DNN on `train`, score `val` after every epoch and keep the weights of the best epoch.

    `initial_state` (e.g. the champion's weights, for fine-tuning) replaces the ImageNet start.

    With `checkpoint_path`, the full state is saved after every epoch; `resume=True` continues from
    that file when it exists. `on_epoch` receives each epoch's metrics (for tracking).

    In a process group (see `ladnn.training.distributed`), the model trains with
    DistributedDataParallel: every rank takes a strided share of each batch of
    `train.batch_size` images and scores a share of `val`, and the loss and validation scores are
    gathered so that every rank chooses the same best epoch. Only rank 0 calls `on_epoch` and
    writes `checkpoint_path`. Batch-norm statistics are synchronised across GPUs
    (`train.sync_batchnorm`) and stay per rank on the CPU, where PyTorch has no SyncBatchNorm.
    """
    if len(train) == 0:
        raise ValueError("the training split is empty: import data with train images first")
    context = current_context()
    world_size = context.world_size if context is not None else 1
    if cfg.train.batch_size % world_size:
        raise ValueError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by the {world_size} "
            "training processes: choose a multiple of --nproc-per-node"
        )
    is_main = context is None or context.is_main
    configure_threads(cfg.train.threads, context)
    torch.manual_seed(cfg.train.seed)
    device = _training_device(cfg.train.device, context)
    model, backbone = build_model(
        cfg.model.backbone,
        cfg.model.variant,
        pretrained=cfg.model.pretrained,
        weights_file=cfg.model.weights_file or None,
        drop_rate=cfg.model.drop_rate,
    )
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model = model.to(device=device, memory_format=memory_format)
    mean, std = backbone.spec.mean, backbone.spec.std
    precision = training_precision(cfg.train.precision, device)
    # Frozen statistics and frozen stages only make sense for weights that were trained before.
    pretrained_start = backbone.pretrained or initial_state is not None
    freeze_batchnorm = cfg.train.freeze_batchnorm and pretrained_start
    if cfg.train.freeze_batchnorm and not freeze_batchnorm and is_main:
        logger.warning(
            "train.freeze_batchnorm ignored: %s starts from random weights, whose batch-norm "
            "layers have no statistics to keep, so they learn them from the batches",
            cfg.model.backbone,
        )
    frozen_stages = cfg.train.freeze_stages if pretrained_start else 0
    if cfg.train.freeze_stages and not frozen_stages and is_main:
        logger.warning(
            "train.freeze_stages ignored: %s starts from random weights, which every stage "
            "has to learn",
            cfg.model.backbone,
        )
    if frozen_stages:
        frozen = freeze_stages(model.backbone, frozen_stages)
        if is_main:
            logger.info(
                "kept the first %d stages of %s fixed (%d parameter tensors)",
                frozen_stages,
                cfg.model.backbone,
                len(frozen),
            )

    # `train.batch_size` counts the images of one optimizer step over all processes, so the
    # learning rate means the same with any number of them.
    batch_size = cfg.train.batch_size // world_size
    sampler = (
        DistributedSampler(
            range(len(train)), num_replicas=world_size, rank=context.rank, shuffle=False
        )
        if context is not None
        else None
    )
    steps_per_epoch = math.ceil((len(sampler) if sampler else len(train)) / batch_size)
    optimizer = _make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg, steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    # With several processes, `generator` draws only the epoch's order, so the order is the same
    # on every rank. Each rank augments its share with a generator of its own.
    augment_generator = generator if context is None else torch.Generator()
    ema = (
        ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True)
        if cfg.train.ema_decay
        else None
    )

    start_epoch, best_auc, best_epoch, best_state, history = 0, -math.inf, 0, None, []
    state, error = None, None
    if resume and checkpoint_path is not None and checkpoint_path.is_file() and is_main:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if without_run_limits(state.get("config") or {}) != resume_identity(cfg):
            error = (
                f"checkpoint {checkpoint_path} was written with another configuration; "
                "resume with the same configuration or start without --resume"
            )
            state = None
    # Rank 0 reads the checkpoint and every other rank resumes from its copy.
    state, error = broadcast_object((state, error), context)
    if error is not None:
        raise ValueError(error)
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best_auc, best_epoch = state["epoch"], state["best_auc"], state["best_epoch"]
        best_state, history = state["best_state"], state["history"]
        logger.info("resumed from %s after epoch %d", checkpoint_path, start_epoch)
    model, step_module = _wrap_distributed(model, device, context, cfg.train.sync_batchnorm)

    started = time.perf_counter()
    limit, limit_start = cfg.train.timeout_minutes * 60 or math.inf, _clock()
    stale_epochs = 0
    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        model.train()
        if freeze_batchnorm or frozen_stages:
            _freeze_batchnorm(model, all_layers=freeze_batchnorm)
        order = torch.randperm(len(train), generator=generator)
        if sampler is not None:
            # This rank's strided share, padded so that every rank takes the same number of steps.
            order = order[list(sampler)]
            augment_generator.manual_seed(cfg.train.seed + 1 + context.rank + 1000 * epoch)
        epoch_loss, seen, epoch_start = 0.0, 0, time.perf_counter()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{cfg.train.epochs}",
            unit="batch",
            disable=not progress or not is_main,
            leave=False,
        )
        for step in bar:
            # One process checks the limit at every step; several agree on it once per epoch.
            if context is None and _clock() - limit_start > limit:
                raise TrainingTimeout(_timeout_message(cfg, epoch - 1, checkpoint_path))
            index = order[step * batch_size : (step + 1) * batch_size]
            pixels = augment_batch(
                train.pixels[index],
                augment_generator,
                scale=(cfg.train.scale_min, cfg.train.scale_max),
                hflip=cfg.train.hflip,
                rotate_degrees=cfg.train.rotate_degrees,
                translate=cfg.train.translate,
                intensity_jitter=cfg.train.intensity_jitter,
            ).to(device)
            inputs = to_model_input(pixels, mean, std).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                logits = step_module(inputs)
            loss = ladnn_loss(
                logits.float(),
                train.covid[index].to(device),
                train.lesions[index].to(device),
                covid_weight=cfg.loss.covid_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model, step=(epoch - 1) * steps_per_epoch + step)
            epoch_loss += loss.item() * len(index)
            seen += len(index)
            bar.set_postfix(
                loss=f"{epoch_loss / seen:.4f}",
                img_s=f"{seen / (time.perf_counter() - epoch_start):.1f}",
            )
        train_seconds = time.perf_counter() - epoch_start
        epoch_loss, seen = sum_across([epoch_loss, seen], context)

        scored = ema.module if ema is not None else model
        _sync_buffers(scored, context)
        probabilities = _predict_sharded(
            scored,
            val.pixels,
            mean,
            std,
            context,
            device=device,
            channels_last=cfg.train.channels_last,
            tta=cfg.eval.tta,
        )
        val_auc = roc_auc(val.covid.numpy(), probabilities[:, 0]) if len(val) else math.nan
        record = {
            "epoch": epoch,
            "train_loss": epoch_loss / max(seen, 1),
            "val_auc": val_auc,
            "lr": optimizer.param_groups[0]["lr"],
            "train_images_per_s": seen / train_seconds,
        }
        history.append(record)
        improved = not math.isnan(val_auc) and val_auc > best_auc
        if improved or best_state is None:
            best_auc = val_auc if not math.isnan(val_auc) else best_auc
            best_epoch = epoch
            best_state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
            stale_epochs = 0
        else:
            stale_epochs += 1
        log_epoch = logger.info if is_main else logger.debug
        log_epoch(
            "epoch %d: loss %.4f, val AUC %.4f, %.1f img/s%s",
            epoch,
            record["train_loss"],
            val_auc,
            record["train_images_per_s"],
            " (best)" if best_epoch == epoch else "",
        )
        if on_epoch is not None and is_main:
            on_epoch(record)
        if checkpoint_path is not None and is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "ema": ema.module.state_dict() if ema is not None else {},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "best_auc": best_auc,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "history": history,
                    "config": config_to_dict(cfg),
                },
            )
        out_of_time = broadcast_object(_clock() - limit_start > limit, context)
        if out_of_time and epoch < cfg.train.epochs:
            raise TrainingTimeout(_timeout_message(cfg, epoch, checkpoint_path))
        if cfg.train.patience and stale_epochs >= cfg.train.patience:
            logger.info(
                "early stop after epoch %d: no better validation AUC in %d epochs",
                epoch,
                stale_epochs,
            )
            break

    model.load_state_dict(best_state)
    model.eval()
    return TrainOutcome(
        model=model,
        backbone=backbone,
        best_epoch=best_epoch,
        best_val_auc=best_auc,
        history=history,
        train_seconds=time.perf_counter() - started,
        device=str(device),
        precision=precision,
    )
