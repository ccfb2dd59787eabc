"""Run the gate's suites with an ephemeral Great Expectations context over pandas DataFrames and
build their Data Docs.

Great Expectations is imported when a runner is created, not when this module is imported,
because importing it takes several seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ladnn.validation.suite import WARNING, Check

__all__ = ["CheckResult", "SuiteRunner"]

logger = logging.getLogger(__name__)

_DOCS_SITE = "batch"
_INDEX_COLUMN = "row"


@dataclass
class CheckResult:
    """The outcome of one check of one suite run."""

    check: Check
    success: bool
    # Rows the expectation found unexpected (column map expectations only; None otherwise).
    unexpected_count: int | None
    # Values of the table's `row` column for the unexpected rows.
    failed_rows: list[int]
    observed_value: Any
    details: dict[str, Any] | None
    # The exception text when GX raised while evaluating the expectation.
    exception: str | None

    def summary(self) -> str:
        """Word the failure in one line: the check, what it expects and what it found."""
        text = f"{self.check.name}: {self.check.description}"
        if self.exception:
            return f"{text} The expectation raised: {self.exception}"
        if self.unexpected_count is not None:
            return f"{text} {self.unexpected_count} row(s) unexpected."
        if self.details:
            return f"{text} Found {self.details}."
        if self.observed_value is not None:
            observed = self.observed_value
            if isinstance(observed, float):
                observed = f"{observed:.3f}"
            return f"{text} Observed {observed}."
        return text


def _json_value(value: Any) -> Any:
    """Convert numpy scalars in GX results to plain Python values."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


class SuiteRunner:
    """An ephemeral GX context with one pandas DataFrame asset and, when `docs_dir` is given, a
    Data Docs site in that folder. Each `run` adds one suite and validates a table with it."""

    def __init__(self, docs_dir: Path | None, run_name: str):
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self._gx = gx
        self.docs_dir = docs_dir
        self.run_name = run_name
        self._run_time = datetime.now(UTC)
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self._context = gx.get_context(mode="ephemeral", project_config=config)
        if docs_dir is not None:
            self._context.add_data_docs_site(
                site_name=_DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(docs_dir),
                    },
                },
            )
        source = self._context.data_sources.add_pandas("ladnn")
        asset = source.add_dataframe_asset("batch_table")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("whole_table")

    def _expectation(self, check: Check) -> Any:
        expectation_class = getattr(self._gx.expectations, check.expectation_type)
        return expectation_class(
            **check.kwargs,
            meta={"check": check.name, "level": check.level},
            notes=check.description,
            severity="warning" if check.level == WARNING else "critical",
        )

    def run(self, suite_name: str, checks: list[Check], table: pd.DataFrame) -> list[CheckResult]:
        """Validate `table` (which must have an integer `row` column) against `checks`."""
        from great_expectations.core.run_identifier import RunIdentifier

        gx = self._gx
        suite = self._context.suites.add(gx.ExpectationSuite(name=suite_name))
        for check in checks:
            suite.add_expectation(self._expectation(check))
        definition = self._context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=self._batch_definition, suite=suite)
        )
        run_id = RunIdentifier(run_name=self.run_name, run_time=self._run_time)
        outcome = definition.run(
            batch_parameters={"dataframe": table},
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [_INDEX_COLUMN],
            },
            run_id=run_id,
        )
        by_name = {check.name: check for check in checks}
        results = []
        for item in outcome.results:
            check = by_name[item.expectation_config.meta["check"]]
            result = item.result or {}
            exception = None
            if item.exception_info and item.exception_info.get("raised_exception"):
                exception = str(item.exception_info.get("exception_message"))
            failed_rows = [
                int(entry[_INDEX_COLUMN]) for entry in result.get("unexpected_index_list") or []
            ]
            results.append(
                CheckResult(
                    check=check,
                    success=bool(item.success),
                    unexpected_count=result.get("unexpected_count"),
                    failed_rows=failed_rows,
                    observed_value=_json_value(result.get("observed_value")),
                    details=_json_value(result.get("details")),
                    exception=exception,
                )
            )
        order = {check.name: index for index, check in enumerate(checks)}
        results.sort(key=lambda result: order[result.check.name])
        logger.debug("suite %s: %d check(s) run", suite_name, len(results))
        return results

    def build_docs(self) -> Path | None:
        """Render the Data Docs of every suite run so far; return the index page, if any."""
        if self.docs_dir is None:
            return None
        self._context.build_data_docs(site_names=[_DOCS_SITE])
        return self.docs_dir / "index.html"
