"""Drift of new batches against the training data."""
