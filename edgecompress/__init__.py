"""edgecompress: compress a trained PyTorch model for a named edge device and prove it there.

Importing the package is cheap: it pulls in no torch and no toolchain, so the torch-free
parts (``edgecompress.runtime``) run on a board with only numpy and the device runtime.
"""

__version__ = "0.1.0"
