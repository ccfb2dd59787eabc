"""`ladnn reproduce` end to end on a small real subset: the flow, the MLflow runs, the table it
logs, and the dashboard's Runs page that shows it."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect.testing.utilities import prefect_test_harness
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from ladnn.cli import app as cli_app
from ladnn.config import load_config
from ladnn.data.operations import import_batch
from ladnn.data.release import read_release
from ladnn.evaluation.delong import delong_test
from ladnn.evaluation.metrics import threshold_metrics
from ladnn.reproduce.runs import (
    REPRODUCE_TAG,
    TABLE_JSON,
    TABLE_MARKDOWN,
    list_reproduce_runs,
    load_table_markdown,
    pair_config,
)
from ladnn.reproduce.table import (
    PAPER_NOT_AVAILABLE,
    TABLE_METRICS,
    BackboneRow,
    BackboneTable,
    MetricCell,
    VariantResult,
    render_markdown,
    table_from_dict,
)
from ladnn.tracking.store import mlflow_client
from ladnn.workspace import Workspace
from pipelines.reproduce import run_reproduce

pytestmark = pytest.mark.slow

BACKBONES = ["resnet18", "efficientnet_lite0"]
TINY = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=32",
    "eval.bootstrap=50",
]
# Images taken from the release per (label, split): both classes in every split.
PER_LABEL_AND_SPLIT = {"train": 14, "val": 6, "test": 10}
APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
PASSWORD = "ana-reads-tables"


def _subset(release_dir: Path) -> list:
    items = read_release(release_dir)
    chosen = []
    for label in (1, 0):
        for split, count in PER_LABEL_AND_SPLIT.items():
            matching = [item for item in items if item.label == label and item.split == split]
            chosen.extend(matching[:count])
    return chosen


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, release_dir: Path) -> dict:
    root = tmp_path_factory.mktemp("reproduce-root")
    space = Workspace.resolve(root / "workspace").ensure()
    import_batch(root, space, "reproduce-test", _subset(release_dir), progress=False)
    overrides = [*TINY, f"data.root={root}"]
    with prefect_test_harness(server_startup_timeout=120):
        result = run_reproduce(
            max_parallel=2,
            dataset_version="v1",
            backbones=BACKBONES,
            overrides=overrides,
            profile="reproduce-cpu",
            workspace=str(space.root),
        )
    cfg = load_config(None, overrides, "reproduce-cpu")
    client = mlflow_client(space.tracking_uri)
    return {"result": result, "client": client, "cfg": cfg, "workspace": space, "root": root}


def _children(client: MlflowClient, parent_run_id: str) -> dict[tuple[str, str], object]:
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
    )
    return {(run.data.tags["backbone"], run.data.tags["variant"]): run for run in runs}


def _predictions(client: MlflowClient, run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run_id, "predictions/predictions_test.csv", folder)
        return pd.read_csv(path, dtype={"image_id": str, "patient_id": str})


def test_parent_has_child_per_pair(reproduced):
    client, result = reproduced["client"], reproduced["result"]
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[REPRODUCE_TAG] == "parent"
    assert parent.data.tags["dataset_version"] == "v1"
    children = _children(client, result["parent_run_id"])
    expected = {(backbone, variant) for backbone in BACKBONES for variant in ("baseline", "ladnn")}
    assert set(children) == expected
    assert all(run.info.status == "FINISHED" for run in children.values())
    assert result["failed"] == []


def test_table_has_paper_layout(reproduced):
    table = reproduced["result"]["table"]
    assert [row["backbone"] for row in table["rows"]] == BACKBONES
    assert table["test_images"] == 2 * PER_LABEL_AND_SPLIT["test"]
    assert table["image_size"] == 64
    for row in table["rows"]:
        assert set(row["variants"]) == {"baseline", "ladnn"}
        for result in row["variants"].values():
            assert [metric for metric, _ in TABLE_METRICS] == list(result["metrics"])
            for cell in result["metrics"].values():
                assert 0 <= cell["value"] <= 1
                assert cell["ci_low"] <= cell["ci_high"]
        assert 0 <= row["delong_p_value"] <= 1

    lines = reproduced["result"]["markdown"].splitlines()
    assert lines[0].split(" | ")[2:4] == ["Baseline (95% CI)", "LA-DNN (95% CI)"]
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert len(body) == len(BACKBONES) * len(TABLE_METRICS)
    assert [line.split(" | ")[1] for line in body[:4]] == [
        "Sensitivity",
        "AUC",
        "F1",
        "Accuracy",
    ]
    assert all(line.count(PAPER_NOT_AVAILABLE) == 2 for line in body)


def test_cells_come_from_child_runs(reproduced):
    client, result = reproduced["client"], reproduced["result"]
    children = _children(client, result["parent_run_id"])
    for row in result["table"]["rows"]:
        for variant, cells in row["variants"].items():
            child = children[(row["backbone"], variant)]
            assert cells["run_id"] == child.info.run_id
            metrics = child.data.metrics
            for metric, cell in cells["metrics"].items():
                assert cell["value"] == metrics[f"test_{metric}"]
                assert cell["ci_low"] == metrics[f"test_{metric}_ci_low"]
                assert cell["ci_high"] == metrics[f"test_{metric}_ci_high"]


def test_threshold_metrics_match_predictions(reproduced):
    client, result = reproduced["client"], reproduced["result"]
    for run in _children(client, result["parent_run_id"]).values():
        predictions = _predictions(client, run.info.run_id)
        recomputed = threshold_metrics(
            predictions["label"], predictions["covid_probability"], run.data.metrics["threshold"]
        )
        for metric in ("sensitivity", "f1", "accuracy"):
            assert math.isclose(recomputed[metric], run.data.metrics[f"test_{metric}"])


def test_delong_uses_both_variants(reproduced):
    client, result = reproduced["client"], reproduced["result"]
    children = _children(client, result["parent_run_id"])
    parent_metrics = client.get_run(result["parent_run_id"]).data.metrics
    for row in result["table"]["rows"]:
        baseline = _predictions(client, children[(row["backbone"], "baseline")].info.run_id)
        ladnn = _predictions(client, children[(row["backbone"], "ladnn")].info.run_id)
        joined = baseline.merge(ladnn, on="image_id", suffixes=("_b", "_l"))
        assert len(joined) == len(baseline) == len(ladnn)
        expected = delong_test(
            joined["label_b"], joined["covid_probability_l"], joined["covid_probability_b"]
        )
        assert math.isclose(row["delong_p_value"], expected.p_value)
        assert math.isclose(parent_metrics[f"delong_p_{row['backbone']}"], expected.p_value)


def test_pretrained_marker_follows_tags(reproduced):
    client, result = reproduced["client"], reproduced["result"]
    children = _children(client, result["parent_run_id"])
    lines = result["markdown"].splitlines()[2:]
    first_cells = [line.split(" | ")[0] for line in lines if line.startswith("| ")]
    labels = [cell.removeprefix("| ").strip() for cell in first_cells]
    labels = [label for label in labels if label]
    assert len(labels) == len(BACKBONES)
    for backbone, label in zip(BACKBONES, labels, strict=True):
        pretrained = children[(backbone, "ladnn")].data.tags["pretrained"] == "true"
        assert ("†" in label) is not pretrained
    # EfficientNet-Lite0 has packaged ImageNet weights and is not among LA-DNN's seven backbones.
    assert children[("efficientnet_lite0", "ladnn")].data.tags["pretrained"] == "true"
    assert "‡" in labels[1]


def test_parent_logs_table_artifacts(reproduced):
    client, result = reproduced["client"], reproduced["result"]
    parent_run_id = result["parent_run_id"]
    assert load_table_markdown(client, parent_run_id) == result["markdown"]
    with tempfile.TemporaryDirectory() as folder:
        logged = json.loads(
            Path(client.download_artifacts(parent_run_id, TABLE_JSON, folder)).read_text()
        )
    assert logged == result["table"]
    assert table_from_dict(logged).to_dict() == logged
    listed = list_reproduce_runs(client, reproduced["cfg"].tracking.experiment)
    assert listed["run id"].tolist() == [parent_run_id]
    assert TABLE_MARKDOWN.endswith(".md")


def test_runs_page_shows_table(reproduced, tmp_path, monkeypatch):
    from dashboards.auth import add_user

    users = tmp_path / "users.yaml"
    add_user(users, "ana", "analyst", PASSWORD)
    overrides = [*TINY, f"data.root={reproduced['root']}"]
    monkeypatch.setenv("LADNN_WORKSPACE", str(reproduced["workspace"].root))
    monkeypatch.setenv("LADNN_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("LADNN_DASHBOARD_USERS", str(users))
    monkeypatch.delenv("LADNN_CONFIG", raising=False)
    monkeypatch.delenv("LADNN_PROFILE", raising=False)

    app = AppTest.from_file(str(APP), default_timeout=120)
    app.run()
    app.text_input(key="sign_in_name").input("ana")
    app.text_input(key="sign_in_password").input(PASSWORD)
    app.button[0].click().run()
    app.switch_page("pages/runs.py")
    app.run()
    assert not app.exception, [item.message for item in app.exception]
    assert "Backbone tables" in [header.value for header in app.header]
    assert app.selectbox(key="runs_table").value == reproduced["result"]["parent_run_id"]
    shown = [item.value for item in app.markdown if "LA-DNN (95% CI)" in item.value]
    # Streamlit drops the trailing newline of a Markdown element.
    assert shown == [reproduced["result"]["markdown"].strip()]


def _table(error: str | None = None) -> BackboneTable:
    cell = MetricCell(0.9, 0.85, 0.95)
    baseline = VariantResult("baseline", "run-a", True, "pypi", 0.5, {"auc": cell})
    ladnn = VariantResult("ladnn", None if error else "run-b", None, "", math.nan, {}, error)
    row = BackboneRow("resnet18", True, {"baseline": baseline, "ladnn": ladnn})
    return BackboneTable("parent", "v1", "paper", 224, 15, 203, "youden", [row])


def test_markdown_marks_failed_variant():
    markdown = render_markdown(_table(error="out of memory"))
    auc_row = next(line for line in markdown.splitlines() if "| AUC |" in line)
    assert "| 90.0 (85.0-95.0) | failed | n/a |" in auc_row
    assert "resnet18:ladnn: out of memory" in markdown


def test_table_json_has_no_nan():
    values = _table(error="out of memory").to_dict()
    assert values["rows"][0]["variants"]["ladnn"]["threshold"] is None
    assert json.loads(json.dumps(values, allow_nan=False)) == values


def test_pair_config_rejects_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        pair_config(load_config(), "resnet19", "ladnn")


def test_cli_rejects_unknown_backbone(tmp_path):
    result = CliRunner().invoke(
        cli_app, ["--workspace", str(tmp_path), "reproduce", "--backbones", "resnet18,nonet"]
    )
    assert result.exit_code == 1
    assert "unknown backbone(s) ['nonet']" in result.output
