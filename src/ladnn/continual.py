"""Continual-learning choices for a retraining run.

`scratch` retrains from ImageNet weights on all training images of the dataset version.
`finetune` starts from the champion's weights and trains on the images added since the champion's
dataset version plus a replay sample of the older training images, so earlier batches are not
forgotten. Either way the comparison with the champion reports each batch separately.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ladnn.config import LadnnCfg
from ladnn.data.operations import find_version, read_version_metadata
from ladnn.data.store import DatasetStore
from ladnn.registry.loading import load_version
from ladnn.registry.review import Registry
from ladnn.workspace import Workspace

__all__ = ["TrainingPlan", "plan_training", "ContinualMode"]

logger = logging.getLogger(__name__)

ContinualMode = Literal["scratch", "finetune"]


@dataclass
class TrainingPlan:
    cfg: LadnnCfg
    mode: str
    initial_state: dict | None = None
    train_ids: set[str] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def plan_training(
    cfg: LadnnCfg,
    workspace: Workspace,
    store: DatasetStore,
    registry: Registry,
    *,
    mode: ContinualMode = "scratch",
    replay_fraction: float = 0.3,
) -> TrainingPlan:
    """Decide the starting weights and training images of a retraining run."""
    if mode == "scratch":
        return TrainingPlan(cfg=cfg, mode=mode, tags={"continual_mode": "scratch"})
    if mode != "finetune":
        raise ValueError(f"unknown continual mode {mode!r}: expected 'scratch' or 'finetune'")
    if not 0.0 <= replay_fraction <= 1.0:
        raise ValueError(f"replay fraction {replay_fraction} must lie between 0 and 1")

    champion = registry.champion()
    if champion is None:
        logger.warning("no champion to fine-tune from; retraining from ImageNet weights instead")
        return TrainingPlan(cfg=cfg, mode="scratch", tags={"continual_mode": "scratch"})
    loaded = load_version(registry.client, registry.name, champion)
    spec = loaded.spec
    tuned_cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, backbone=spec["backbone"], variant=spec["variant"]),
        train=dataclasses.replace(cfg.train, image_size=int(spec["image_size"])),
    )

    current = store.read_metadata()
    train_now = set(current.loc[current["split"] == "train", "image_id"])
    champion_dataset = loaded.tags.get("dataset_version")
    old_metadata = read_version_metadata(workspace, find_version(workspace, champion_dataset))
    train_before = set(old_metadata.loc[old_metadata["split"] == "train", "image_id"])
    new_ids = train_now - train_before
    if not new_ids:
        raise ValueError(
            f"no training images were added since the champion's dataset {champion_dataset}; "
            "nothing to fine-tune on"
        )
    old_ids = sorted(train_now & train_before)
    rng = np.random.default_rng(cfg.train.seed)
    replay_count = round(replay_fraction * len(old_ids))
    replay = set(rng.choice(old_ids, size=replay_count, replace=False)) if replay_count else set()
    logger.info(
        "fine-tuning champion v%s on %d new and %d replayed training images",
        champion,
        len(new_ids),
        len(replay),
    )
    return TrainingPlan(
        cfg=tuned_cfg,
        mode=mode,
        initial_state=loaded.model.state_dict(),
        train_ids=new_ids | replay,
        tags={
            "continual_mode": "finetune",
            "finetuned_from": f"{registry.name}/{champion}",
            "replay_fraction": str(replay_fraction),
            "new_train_images": str(len(new_ids)),
            "replayed_train_images": str(len(replay)),
        },
    )
