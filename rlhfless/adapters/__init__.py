"""Engines and backends: transformers (``hf``), the embedded tiny model (``tiny``).

Adapters are imported by name from configs; importing this package imports nothing heavy.
"""
