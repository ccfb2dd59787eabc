"""Prefect flows over the functions in `ladnn`."""
