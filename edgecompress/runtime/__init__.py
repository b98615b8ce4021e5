"""Benchmarking where the model runs. Never imports torch: it must run on a board with
only numpy and the device runtime."""
