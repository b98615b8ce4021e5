"""Tiny models and data shared by the examples, docs and tests."""
