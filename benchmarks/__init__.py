"""Benchmarks (run as scripts: ``python benchmarks/runtime.py``)."""
