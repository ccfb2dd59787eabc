"""Champion and challenger review on real models: compare, gates, promote, reject, rollback, audit.

Once per module, 120 release images are imported as dataset version v1 and three tiny models are
trained on it (1 epoch at 64 px): LA-DNN with seeds 0 and 1, and the baseline variant. Each test
registers those runs as versions 1, 2 and 3 of a registered model of its own, so the tests do not
share review state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ladnn.config import LadnnCfg, load_config
from ladnn.cycle import register_run
from ladnn.data.lesions import LESIONS
from ladnn.data.operations import import_batch
from ladnn.data.release import RELEASE_BATCH_ID, read_release
from ladnn.data.store import DatasetStore
from ladnn.registry.audit import AuditLog, audit_database_url
from ladnn.registry.compare import ComparisonReport
from ladnn.registry.review import Registry, ReviewError
from ladnn.registry.workflow import compare_versions, open_registry
from ladnn.tracking.store import tracking_uri_for
from ladnn.training.run import TrainingRun, run_training
from ladnn.workspace import Workspace

# One torch thread: on a shared two-core machine under load, two threads ran an EfficientNet-Lite0
# forward pass about ten times slower than one.
TINY = [
    "train.epochs=1",
    "train.image_size=64",
    "train.batch_size=64",
    "train.threads=1",
    "eval.bootstrap=50",
]
# Gates that any candidate passes, and gates that every candidate fails.
LENIENT = ["gates.min_sensitivity=0", "gates.max_auc_drop=1", "gates.max_batch_auc_drop=1"]
STRICT = ["gates.min_sensitivity=1.01"]
# Images taken from the release per (split, label): both classes in every split.
SUBSET = {
    ("train", 1): 30,
    ("train", 0): 30,
    ("val", 1): 10,
    ("val", 0): 10,
    ("test", 1): 20,
    ("test", 0): 20,
}
METRICS = ("auc", "sensitivity", "specificity", "precision", "f1", "accuracy")


@dataclass
class ReviewSetup:
    root: Path
    workspace: Workspace
    store: DatasetStore
    # Training runs in the order they are registered: versions 1, 2 and 3.
    runs: list[TrainingRun]

    def config(self, name: str, gates: list[str] = LENIENT) -> LadnnCfg:
        return load_config(
            overrides=[
                *TINY,
                f"data.root={self.root}",
                f"tracking.registered_model={name}",
                *gates,
            ]
        )

    def register(self, name: str, gates: list[str] = LENIENT) -> LadnnCfg:
        """Register the three runs as versions 1, 2 and 3 of `name` and return its configuration."""
        cfg = self.config(name, gates)
        versions = [register_run(cfg, self.workspace, run) for run in self.runs]
        assert versions == ["1", "2", "3"]
        return cfg

    def registry(self, cfg: LadnnCfg) -> Registry:
        return open_registry(cfg, self.workspace)

    def compare(self, cfg: LadnnCfg, candidate: str, champion: str | None = None):
        return compare_versions(cfg, self.workspace, self.store, candidate, champion)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, release_dir: Path) -> ReviewSetup:
    base = tmp_path_factory.mktemp("review")
    root = base / "root"
    root.mkdir()
    workspace = Workspace.resolve(base / "workspace").ensure()

    remaining = dict(SUBSET)
    items = []
    for item in read_release(release_dir):
        key = (item.split, item.label)
        if remaining.get(key, 0) > 0:
            remaining[key] -= 1
            items.append(item)
    imported = import_batch(root, workspace, RELEASE_BATCH_ID, items, progress=False)
    store = DatasetStore(root)

    runs = []
    for extra in ([], ["train.seed=1"], ["model.variant=baseline"]):
        cfg = load_config(overrides=[*TINY, f"data.root={root}", *extra])
        runs.append(run_training(cfg, workspace, store, imported.version, progress=False))
    return ReviewSetup(root, workspace, store, runs)


def release_images(release_dir: Path) -> list[bytes]:
    """One COVID and one negative image of the release, as encoded bytes."""
    files = [sorted((release_dir / "CT_COVID").glob("*.png"))[0]]
    files += [sorted((release_dir / "CT_NonCOVID").glob("*.jpg"))[0]]
    return [path.read_bytes() for path in files]


# --- Registration and promotion without a comparison ---------------------------------------------


def test_registration_sets_no_alias(setup):
    cfg = setup.register("review-fresh")
    registry = setup.registry(cfg)
    assert registry.champion() is None
    assert registry.challenger() is None
    for number in ("1", "2", "3"):
        version = registry.client.get_model_version("review-fresh", number)
        assert version.aliases == [], number
        assert version.tags["review_state"] == "pending", number
        assert "gate_state" not in version.tags, number
    assert registry.audit.events("review-fresh") == []


def test_registration_tags_metric_intervals(setup):
    cfg = setup.register("review-tags")
    tags = setup.registry(cfg).client.get_model_version("review-tags", "1").tags

    # Sensitivity, specificity and accuracy are defined in every resample with both classes;
    # precision and F1 are not when a model calls no image positive.
    for name in ("auc", "sensitivity", "specificity", "accuracy"):
        low, high = json.loads(tags[f"test_{name}_ci"])
        assert 0.0 <= low <= high <= 1.0, name
    for name in ("precision", "f1"):
        assert tags[f"test_{name}_ci"].startswith("["), name
    assert tags["dataset_version"] == "v1"
    assert tags["validation_result_id"].startswith("val-")


def test_uncompared_promote_needs_override(setup):
    cfg = setup.register("review-uncompared")
    registry = setup.registry(cfg)

    with pytest.raises(ReviewError) as raised:
        registry.promote("1", reviewer="alice", reason="first model")
    assert "--override" in str(raised.value)
    assert "not evaluated" in str(raised.value)
    assert registry.champion() is None
    assert registry.audit.events("review-uncompared") == []

    event = registry.promote("1", reviewer="alice", reason="first model", override=True)
    assert registry.champion() == "1"
    assert event.action == "promote"
    assert event.from_version is None
    assert event.to_version == "1"
    assert event.details["override"] is True
    assert event.details["problems"] == ["its gates are not evaluated (run ladnn compare)"]
    tags = registry.client.get_model_version("review-uncompared", "1").tags
    assert tags["review_state"] == "approved"
    assert "champion_since" in tags


def test_promote_champion_again_raises(setup):
    cfg = setup.register("review-again")
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="alice", reason="first model", override=True)
    with pytest.raises(ReviewError, match="already the champion"):
        registry.promote("1", reviewer="alice", reason="again", override=True)
    assert len(registry.audit.events("review-again")) == 1


def test_promote_unknown_version_raises(setup):
    cfg = setup.register("review-unknown")
    registry = setup.registry(cfg)
    with pytest.raises(ReviewError, match="has no version 9"):
        registry.promote("9", reviewer="alice", reason="typo", override=True)


@pytest.fixture(scope="module")
def unreviewed(setup) -> Registry:
    """Versions 1 to 3 of a model on which no review decision succeeds."""
    return setup.registry(setup.register("review-names"))


@pytest.mark.parametrize(
    ("reviewer", "reason", "message"),
    [("", "ok", "reviewer"), ("  ", "ok", "reviewer"), ("alice", "", "reason")],
)
def test_empty_reviewer_or_reason_raises(unreviewed, reviewer, reason, message):
    with pytest.raises(ReviewError, match=message):
        unreviewed.promote("1", reviewer=reviewer, reason=reason, override=True)
    with pytest.raises(ReviewError, match=message):
        unreviewed.reject("2", reviewer=reviewer, reason=reason)
    with pytest.raises(ReviewError, match=message):
        unreviewed.rollback(reviewer=reviewer, reason=reason)
    assert unreviewed.audit.events("review-names") == []
    assert unreviewed.champion() is None


# --- Comparison with lenient gates, then promotion -----------------------------------------------


@dataclass
class LenientFlow:
    """Promote v1 with override, compare v2 with it under lenient gates, then promote v2."""

    name: str
    report: ComparisonReport
    markdown: str
    # State of v2 right after the comparison, before its promotion.
    compared_tags: dict[str, str]
    compared_challenger: str | None
    registry: Registry


@pytest.fixture(scope="module")
def lenient(setup) -> LenientFlow:
    name = "review-lenient"
    cfg = setup.register(name, LENIENT)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="carol", reason="first model", override=True)
    report, markdown = setup.compare(cfg, "2")
    compared_tags = dict(registry.client.get_model_version(name, "2").tags)
    compared_challenger = registry.challenger()
    registry.promote("2", reviewer="alice", reason="passes the gates")
    return LenientFlow(name, report, markdown, compared_tags, compared_challenger, registry)


def test_compare_tags_gate_passed(lenient):
    assert lenient.report.gates_passed
    assert lenient.compared_tags["gate_state"] == "passed"
    assert lenient.compared_tags["compared_with"] == "1"


def test_compare_sets_challenger(lenient):
    assert lenient.compared_challenger == "2"


def test_compare_stores_report_artifacts(setup, lenient):
    # Opening the registry points MLflow's default client at this module's tracking store.
    registry = setup.registry(setup.config(lenient.name))
    uri = lenient.compared_tags["comparison_uri"]
    run_id = registry.client.get_model_version(lenient.name, "2").run_id
    assert run_id == setup.runs[1].run_id
    assert uri == f"runs:/{run_id}/comparison/v2_vs_v1.json"

    stored = json.loads(mlflow.artifacts.load_text(uri))
    assert stored["model_name"] == lenient.name
    assert stored["candidate"] == "2"
    assert stored["champion"] == "1"
    assert stored["delong"] == lenient.report.delong
    markdown = mlflow.artifacts.load_text(uri.removesuffix(".json") + ".md")
    assert markdown == lenient.markdown


def test_report_metrics_with_ci(lenient):
    report = lenient.report
    assert report.n_images == 40
    assert report.n_patients > 0
    for role in ("candidate", "champion"):
        metrics = report.metrics[role]
        for name in METRICS:
            assert name in metrics, (role, name)
        assert 0.0 <= metrics["auc_ci_low"] <= metrics["auc_ci_high"] <= 1.0, role
        assert 0.0 <= metrics["threshold"] <= 1.0, role


def test_report_thresholds_from_models(setup, lenient):
    metrics = lenient.report.metrics
    assert metrics["candidate"]["threshold"] == pytest.approx(setup.runs[1].threshold)
    assert metrics["champion"]["threshold"] == pytest.approx(setup.runs[0].threshold)


def test_report_paired_differences(lenient):
    report = lenient.report
    for name in METRICS:
        difference = report.differences[name]
        expected = report.metrics["candidate"][name] - report.metrics["champion"][name]
        # Precision is NaN for a model that calls no image positive at its threshold.
        assert difference["difference"] == pytest.approx(expected, nan_ok=True), name
    auc = report.differences["auc"]
    assert auc["ci_low"] <= auc["ci_high"]
    assert auc["ci_low"] >= -1.0
    assert auc["ci_high"] <= 1.0


def test_report_delong_p_in_range(lenient):
    delong = lenient.report.delong
    assert delong is not None
    assert 0.0 <= delong["p_value"] <= 1.0
    assert delong["standard_error"] >= 0.0


def test_report_metric_intervals(lenient):
    for role in ("candidate", "champion"):
        metrics = lenient.report.metrics[role]
        for name in ("sensitivity", "specificity", "accuracy"):
            low, high = metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"]
            assert 0.0 <= low <= metrics[name] <= high <= 1.0, (role, name)


def test_report_per_batch_table(lenient):
    [row] = lenient.report.per_batch
    assert row["batch_id"] == RELEASE_BATCH_ID
    assert row["n"] == 40
    assert row["positives"] == 20
    assert row["auc_difference"] == pytest.approx(row["candidate_auc"] - row["champion_auc"])
    assert row["auc_difference_ci_low"] <= row["auc_difference_ci_high"]
    assert row["candidate_auc_ci_low"] <= row["candidate_auc_ci_high"]
    assert 0.0 <= row["delong_p"] <= 1.0
    assert row["delong_p"] == pytest.approx(lenient.report.delong["p_value"])
    gate_names = [gate.name for gate in lenient.report.gates]
    assert gate_names == ["min_sensitivity", "max_auc_drop", f"batch_auc:{RELEASE_BATCH_ID}"]


def test_report_per_source_and_subtype(lenient):
    report = lenient.report
    sources = report.per_source
    subtypes = report.per_subtype

    assert sum(row["n"] for row in sources) == report.n_images
    assert all("candidate_auc" in row for row in sources)
    # Release negatives have no subtype: one slice of all 20 COVID images against them.
    assert [row["negative_subtype"] for row in subtypes] == ["unknown"]
    assert subtypes[0]["positives"] == 20
    assert subtypes[0]["n"] == 40


def test_markdown_sections(lenient):
    markdown = lenient.markdown
    assert markdown.startswith(f"# {lenient.name}: candidate v2 against champion v1")
    assert "DeLong test for the AUCs" in markdown
    assert "## Per batch" in markdown
    assert "## COVID against each negative subtype" in markdown
    assert "DeLong p" in markdown
    assert "## Gates" in markdown
    assert "- PASS `min_sensitivity`" in markdown


def test_promote_moves_champion(lenient):
    registry = lenient.registry
    assert registry.champion() == "2"
    assert registry.challenger() is None
    first = registry.client.get_model_version(lenient.name, "1").tags
    assert first["superseded_by"] == "2"
    assert "superseded_at" in first
    second = registry.client.get_model_version(lenient.name, "2").tags
    assert second["review_state"] == "approved"


def test_promote_is_audited(lenient):
    events = lenient.registry.audit.events(lenient.name)
    assert [event.seq for event in events] == [1, 2]
    event = events[-1]
    assert event.action == "promote"
    assert event.from_version == "1"
    assert event.to_version == "2"
    assert event.reviewer == "alice"
    assert event.reason == "passes the gates"
    assert event.comparison == lenient.compared_tags["comparison_uri"]
    assert event.details["override"] is False
    assert event.details["problems"] == []


def test_champion_alias_predicts(setup, lenient, release_dir):
    # Opening the registry points MLflow's default client at this module's tracking store.
    setup.registry(setup.config(lenient.name))
    model = mlflow.pyfunc.load_model(f"models:/{lenient.name}@champion")
    images = release_images(release_dir)
    result = model.predict(pd.DataFrame({"image": images}))
    assert list(result.columns) == ["covid_probability", *LESIONS, "covid_positive"]
    assert len(result) == 2
    assert result["covid_probability"].between(0, 1).all()
    assert result[list(LESIONS)].notna().all().all()
    assert set(result["covid_positive"]) <= {0, 1}


def test_compare_with_champion_raises(setup, lenient):
    cfg = setup.config(lenient.name)
    with pytest.raises(ReviewError, match="is the champion"):
        setup.compare(cfg, "2")
    with pytest.raises(ReviewError, match="cannot compare version 3 with itself"):
        setup.compare(cfg, "3", "3")


def test_compare_without_champion(setup):
    cfg = setup.register("review-alone")
    report, markdown = setup.compare(cfg, "1")
    assert report.champion is None
    assert report.delong is None
    assert report.differences == {}
    assert [gate.name for gate in report.gates] == ["min_sensitivity"]
    assert "against no champion" in markdown
    assert setup.registry(cfg).challenger() == "1"


# --- Comparison with strict gates ----------------------------------------------------------------


def test_failed_gates_need_override(setup):
    name = "review-strict"
    cfg = setup.register(name, STRICT)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="carol", reason="first model", override=True)

    report, markdown = setup.compare(cfg, "3")
    assert not report.gates_passed
    failed = [gate.name for gate in report.gates if not gate.passed]
    assert "min_sensitivity" in failed
    assert "- FAIL `min_sensitivity`" in markdown
    tags = registry.client.get_model_version(name, "3").tags
    assert tags["gate_state"] == "failed"
    assert registry.challenger() is None

    with pytest.raises(ReviewError) as raised:
        registry.promote("3", reviewer="alice", reason="baseline")
    assert "its gates are failed" in str(raised.value)
    assert "--override" in str(raised.value)
    assert registry.champion() == "1"

    event = registry.promote("3", reviewer="alice", reason="accepted risk", override=True)
    assert registry.champion() == "3"
    assert event.from_version == "1"
    assert event.details["override"] is True
    assert event.details["problems"] == ["its gates are failed"]
    assert event.comparison == tags["comparison_uri"]
    assert registry.audit.events(name)[-1] == event


@pytest.mark.parametrize(
    ("gates", "failing"),
    [
        (
            ["gates.min_sensitivity=0", "gates.max_auc_drop=-1", "gates.max_batch_auc_drop=1"],
            ["max_auc_drop"],
        ),
        (
            ["gates.min_sensitivity=0", "gates.max_auc_drop=1", "gates.max_batch_auc_drop=-1"],
            [f"batch_auc:{RELEASE_BATCH_ID}"],
        ),
    ],
    ids=["auc-drop", "batch-auc-drop"],
)
def test_relative_gate_blocks_promotion(setup, gates, failing):
    """A margin of -1 requires the candidate to beat the champion by a whole AUC point."""
    name = f"review-{failing[0].split(':')[0]}"
    cfg = setup.register(name, gates)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="carol", reason="first model", override=True)

    report, markdown = setup.compare(cfg, "2")

    assert [gate.name for gate in report.gates if not gate.passed] == failing
    assert f"- FAIL `{failing[0]}`" in markdown
    assert "AUC change" in next(g.detail for g in report.gates if g.name == failing[0])
    assert registry.challenger() is None
    with pytest.raises(ReviewError, match="its gates are failed"):
        registry.promote("2", reviewer="alice", reason="gate failed")


def test_stale_comparison_needs_override(setup):
    name = "review-stale"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="carol", reason="first model", override=True)
    setup.compare(cfg, "2")
    registry.promote("3", reviewer="carol", reason="another champion", override=True)

    with pytest.raises(ReviewError) as raised:
        registry.promote("2", reviewer="alice", reason="compared long ago")

    assert "compared with version 1, but the champion is 3" in str(raised.value)
    assert registry.champion() == "3"


def test_compare_with_other_version_not_proposed(setup):
    name = "review-other"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="carol", reason="first model", override=True)

    report, _ = setup.compare(cfg, "2", "3")

    assert report.champion == "3"
    assert report.gates_passed
    assert registry.challenger() is None
    with pytest.raises(ReviewError, match="compared with version 3, but the champion is 1"):
        registry.promote("2", reviewer="alice", reason="compared with 3")


# --- Rollback ------------------------------------------------------------------------------------


def test_rollback_without_earlier_champion(setup):
    name = "review-first-rollback"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    with pytest.raises(ReviewError, match="no earlier champion"):
        registry.rollback(reviewer="bob", reason="nothing to undo")
    registry.promote("1", reviewer="alice", reason="first model", override=True)
    with pytest.raises(ReviewError, match="no earlier champion"):
        registry.rollback(reviewer="bob", reason="nothing before it")
    assert registry.champion() == "1"
    assert len(registry.audit.events(name)) == 1


def test_rollback_restores_previous(setup):
    name = "review-rollback"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="alice", reason="first model", override=True)
    registry.promote("2", reviewer="alice", reason="second model", override=True)

    event = registry.rollback(reviewer="bob", reason="v2 misses cases")
    assert registry.champion() == "1"
    assert event.action == "rollback"
    assert event.from_version == "2"
    assert event.to_version == "1"
    assert event.reviewer == "bob"
    assert event.reason == "v2 misses cases"
    assert event.details == {"replaced": "2"}
    assert registry.client.get_model_version(name, "2").tags["superseded_by"] == "1"
    assert "superseded_by" not in registry.client.get_model_version(name, "1").tags
    assert [e.action for e in registry.audit.events(name)] == ["promote", "promote", "rollback"]


# --- Rejection -----------------------------------------------------------------------------------


def test_reject_is_recorded(setup):
    name = "review-reject"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.propose("2")

    event = registry.reject("2", reviewer="bob", reason="worse on negatives")
    assert event.action == "reject"
    assert event.to_version == "2"
    assert event.from_version is None
    assert event.reviewer == "bob"
    assert registry.client.get_model_version(name, "2").tags["review_state"] == "rejected"
    assert registry.challenger() is None
    assert registry.champion() is None
    assert registry.audit.events(name) == [event]


def test_rejected_promote_needs_override(setup):
    name = "review-rejected"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.reject("2", reviewer="bob", reason="worse on negatives")

    with pytest.raises(ReviewError) as raised:
        registry.promote("2", reviewer="alice", reason="reconsidered")
    assert "it was rejected" in str(raised.value)
    assert "--override" in str(raised.value)

    event = registry.promote("2", reviewer="alice", reason="reconsidered", override=True)
    assert registry.champion() == "2"
    assert "it was rejected" in event.details["problems"]
    assert event.details["override"] is True
    assert registry.client.get_model_version(name, "2").tags["review_state"] == "approved"


def test_reject_champion_raises(setup):
    name = "review-reject-champion"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="alice", reason="first model", override=True)
    with pytest.raises(ReviewError, match="use rollback"):
        registry.reject("1", reviewer="bob", reason="too late")
    assert registry.champion() == "1"


# --- Repair after a crash between the audit write and the alias move ----------------------------


def test_open_registry_repairs_alias(setup):
    name = "review-reconcile"
    cfg = setup.register(name)
    registry = setup.registry(cfg)
    registry.promote("1", reviewer="alice", reason="first model", override=True)

    log = AuditLog(audit_database_url(tracking_uri_for(cfg, setup.workspace)))
    log.append(
        model_name=name,
        expected_seq=log.last_seq(name),
        action="promote",
        from_version="1",
        to_version="2",
        reviewer="alice",
        reason="crashed before the alias moved",
    )
    assert registry.champion() == "1"

    repaired = setup.registry(cfg)
    assert repaired.champion() == "2"
    event = repaired.rollback(reviewer="bob", reason="undo")
    assert event.seq == 3
    assert repaired.champion() == "1"
