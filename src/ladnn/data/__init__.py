"""Canonical dataset: import, normalise, split and version chest-CT slices."""
