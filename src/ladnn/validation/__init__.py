"""The data-validation gate: per-image metrics, a Great Expectations suite kept as code, results
with Data Docs, the quarantine of rejected files and the near-duplicate audit of the release."""

from ladnn.validation.gate import BatchValidationError, validate_batch
from ladnn.validation.quarantine import list_quarantine, release_entry
from ladnn.validation.results import Reason, ValidationResult
from ladnn.validation.suite import ValidationSettings

__all__ = [
    "BatchValidationError",
    "Reason",
    "ValidationResult",
    "ValidationSettings",
    "list_quarantine",
    "release_entry",
    "validate_batch",
]
