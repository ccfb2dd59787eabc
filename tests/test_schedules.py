"""Learning-rate schedules step through every run length without failing."""

import pytest
import torch

from ladnn.config import load_config
from ladnn.training.trainer import _make_scheduler


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
@pytest.mark.parametrize("epochs", [1, 5])
def test_schedule_steps_every_run_length(schedule, epochs):
    """Runs of 1 to 40 optimiser steps, including the 5-step run that ends warm-up at step 0."""
    cfg = load_config(overrides=[f"train.schedule={schedule}", f"train.epochs={epochs}"])
    for steps_per_epoch in range(1, 41):
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([weight], lr=cfg.train.lr)
        scheduler = _make_scheduler(optimizer, cfg, steps_per_epoch)
        rates = []
        for _ in range(epochs * steps_per_epoch):
            optimizer.step()
            scheduler.step()
            rates.append(optimizer.param_groups[0]["lr"])

        assert all(0.0 <= rate <= cfg.train.lr * 1.0001 for rate in rates), steps_per_epoch


def test_onecycle_warms_up_then_anneals():
    cfg = load_config(overrides=["train.schedule=onecycle", "train.epochs=1"])
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=cfg.train.lr)
    scheduler = _make_scheduler(optimizer, cfg, 5)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])

    peak = rates.index(max(rates))
    assert 0 < peak < 4
    assert rates[peak] == pytest.approx(cfg.train.lr)
    assert rates[-1] < rates[0]
