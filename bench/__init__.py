"""Benchmarks (not part of the app): `python bench/generate.py --help`."""
