"""Altair charts: ROC and precision-recall curves, calibration, and training histories."""

from __future__ import annotations

import altair as alt
import pandas as pd

__all__ = ["curve_chart", "calibration_chart", "history_chart"]


def curve_chart(curves: dict[str, pd.DataFrame], x: str, y: str, diagonal: bool) -> alt.Chart:
    """Overlay one curve per model; `curves` maps a model label to its points in drawing order."""
    frames = []
    for label, points in curves.items():
        frame = points[[x, y]].copy()
        frame["model"] = label
        frame["order"] = range(len(frame))
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True)
    chart = (
        alt.Chart(combined)
        .mark_line()
        .encode(
            x=alt.X(x, scale=alt.Scale(domain=[0, 1])),
            y=alt.Y(y, scale=alt.Scale(domain=[0, 1])),
            color="model:N",
            order="order:Q",
        )
    )
    if diagonal:
        line = pd.DataFrame({x: [0.0, 1.0], y: [0.0, 1.0]})
        chart = chart + alt.Chart(line).mark_line(strokeDash=[4, 4], color="gray").encode(x=x, y=y)
    return chart.properties(height=320)


def calibration_chart(bins: dict[str, pd.DataFrame]) -> alt.Chart:
    """Observed COVID rate against mean predicted probability per bin, one line per model."""
    frames = []
    for label, frame in bins.items():
        copy = frame[["mean_probability", "fraction_positive", "count"]].copy()
        copy["model"] = label
        frames.append(copy)
    combined = pd.concat(frames, ignore_index=True).rename(
        columns={
            "mean_probability": "mean predicted probability",
            "fraction_positive": "observed COVID rate",
        }
    )
    x, y = "mean predicted probability", "observed COVID rate"
    points = (
        alt.Chart(combined)
        .mark_line(point=True)
        .encode(
            x=alt.X(x, scale=alt.Scale(domain=[0, 1])),
            y=alt.Y(y, scale=alt.Scale(domain=[0, 1])),
            color="model:N",
            tooltip=["model", x, y, "count"],
        )
    )
    line = pd.DataFrame({x: [0.0, 1.0], y: [0.0, 1.0]})
    diagonal = alt.Chart(line).mark_line(strokeDash=[4, 4], color="gray").encode(x=x, y=y)
    return (points + diagonal).properties(height=320)


def history_chart(history: pd.DataFrame) -> alt.Chart:
    """Plot one metric's value per epoch, one line per run; points keep one-epoch runs visible."""
    return (
        alt.Chart(history)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", scale=alt.Scale(zero=False)),
            color="run:N",
            tooltip=["run", "epoch", "value"],
        )
        .properties(height=260)
    )
