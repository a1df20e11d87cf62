"""Benchmarks for `make bench` (not tests: no timed assertions anywhere in pytest)."""
