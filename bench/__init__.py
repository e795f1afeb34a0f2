"""Benchmarks (not installed with the package): run them as ``python -m bench.<name>`` from the repo root."""
