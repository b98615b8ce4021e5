"""Exporters: PyTorch -> ONNX -> device formats. Each writes its artifact atomically and
proves parity with its reference. Toolchains are imported inside the functions using them."""
