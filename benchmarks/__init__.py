"""Benchmarks behind `make bench`; each module writes one section of docs/BENCHMARKS.md."""
