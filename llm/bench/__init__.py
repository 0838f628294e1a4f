"""Benchmarks that print figures (never timed tests): `python -m llm.bench KIND [overrides] [--json]`."""
