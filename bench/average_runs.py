"""Score the average of several training runs' COVID-19 probabilities on the test split.

Reads each run's logged `predictions/predictions_val.csv` and `predictions/predictions_test.csv`
and averages the probabilities per image. The threshold is chosen on the averaged validation
probabilities (`--threshold-rule`, Youden's J by default). The averaged test probabilities are
scored as a single run is: AUC with its patient-bootstrap 95% interval, and sensitivity,
specificity, F1 and accuracy at the frozen threshold. Each member's own validation and test AUC
are printed for comparison.

    .venv/bin/python bench/average_runs.py --tracking-uri sqlite:////tmp/e5/ws/mlflow/mlflow.db \\
        RUN_ID RUN_ID RUN_ID
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from common import machine_info, write_result

from ladnn.evaluation.metrics import auc_with_ci, choose_threshold, roc_auc, threshold_metrics
from ladnn.tracking.store import mlflow_client


def load_predictions(client, run_id: str, folder: Path) -> dict[str, pd.DataFrame]:
    frames = {}
    for split in ("val", "test"):
        path = client.download_artifacts(
            run_id, f"predictions/predictions_{split}.csv", str(folder)
        )
        frames[split] = pd.read_csv(path).set_index("image_id").sort_index()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_ids", nargs="+", help="MLflow run ids of finished training runs.")
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking URI of the runs.")
    parser.add_argument("--threshold-rule", default="youden", choices=["youden", "sensitivity"])
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="Bootstrap resamples over patients for the AUC interval (default 1000).",
    )
    parser.add_argument("--output", type=Path, help="Also write the JSON result to this file.")
    args = parser.parse_args()

    client = mlflow_client(args.tracking_uri)
    members, probabilities = [], {"val": [], "test": []}
    with tempfile.TemporaryDirectory() as scratch:
        for run_id in args.run_ids:
            frames = load_predictions(client, run_id, Path(scratch) / run_id)
            for split in ("val", "test"):
                if probabilities[split] and not frames[split].index.equals(
                    probabilities[split][0].index
                ):
                    raise SystemExit(
                        f"run {run_id} has {split} predictions for other images than run "
                        f"{args.run_ids[0]}: average only runs trained and scored on the same "
                        "dataset version"
                    )
                probabilities[split].append(frames[split])
            members.append(
                {
                    "run_id": run_id,
                    **{
                        f"{split}_auc": roc_auc(
                            frames[split]["label"], frames[split]["covid_probability"]
                        )
                        for split in ("val", "test")
                    },
                }
            )

    averaged = {
        split: sum(frame["covid_probability"] for frame in frames) / len(frames)
        for split, frames in probabilities.items()
    }
    val, test = probabilities["val"][0], probabilities["test"][0]
    threshold = choose_threshold(val["label"], averaged["val"], args.threshold_rule)
    auc, low, high = auc_with_ci(
        test["label"], averaged["test"], test["patient_id"].astype(str), n_resamples=args.bootstrap
    )
    write_result(
        {
            "benchmark": "average_runs",
            "machine": machine_info(),
            "members": members,
            "val_auc": roc_auc(val["label"], averaged["val"]),
            "threshold": threshold,
            "test_auc": auc,
            "test_auc_ci": [low, high],
            "test_at_threshold": threshold_metrics(test["label"], averaged["test"], threshold),
            "test_images": len(test),
        },
        args.output,
    )


if __name__ == "__main__":
    main()
