"""The one error hierarchy. Every message names the file, layer or op, what was
expected, and what to do about it."""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base of every error edgecompress raises on purpose. The CLI prints these
    without a traceback and exits with status 2."""


class ConfigError(EdgeCompressError):
    """A recipe, flag or option is wrong."""


class ModelLoadError(EdgeCompressError):
    """A model file cannot be read in any accepted form."""


class DataError(EdgeCompressError):
    """An image folder or data set cannot be used."""


class UnsupportedOpError(EdgeCompressError):
    """A model contains an operator the chosen target or exporter cannot run."""


class MissingToolchainError(EdgeCompressError):
    """A vendor toolchain (rknn-toolkit2, tensorrt, ...) is not installed or broken."""


class ParityError(EdgeCompressError):
    """An exported model does not compute what the PyTorch model did."""


class TrainingDivergedError(EdgeCompressError):
    """Training's loss became NaN or infinite."""


class DeviceError(EdgeCompressError):
    """A benchmark device is unreachable, disconnected or misbehaved."""


class BudgetError(EdgeCompressError):
    """A report breaks a CI budget (accuracy drop, latency, size)."""


class Stopped(KeyboardInterrupt):
    """A build stopped by SIGTERM (a CI job's timeout, ``kill``): handled as Ctrl-C is, so
    the running stage is recorded as interrupted and what finished is kept."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
