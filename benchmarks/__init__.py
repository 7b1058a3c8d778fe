"""Benchmarks: scripts outside the test suite, run from the checkout as ``python -m benchmarks.NAME``."""
