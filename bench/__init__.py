"""Benchmarks of the TSynD training path on real data: `python -m bench.run` (run.py)."""
