"""Measure the machine a build targets (``edgecompress probe``) and choose from the
measurement: channel alignment, INT8 weight storage, graph optimisation level."""

from edgecompress.probe.api import MeasuredProfile, cached, probe, resolve_target

__all__ = ["MeasuredProfile", "cached", "probe", "resolve_target"]
