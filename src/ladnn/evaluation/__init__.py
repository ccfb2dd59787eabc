"""Metrics and reports from predicted probabilities."""
