"""Scenarios: end-to-end runs of the engine that print a table and end with one JSON line."""
