"""The target's exporters, in the order its profile names them (or the ones the recipe
names): each writes its file from the model or from the file an earlier one wrote, then
proves it (:mod:`edgecompress.exporters.registry`). ``export_onnx``, ``export_rknn`` and
``export_tensorrt`` are the same with one exporter each."""

from __future__ import annotations

from torch import nn

from edgecompress.exporters.registry import EXPORTERS, export_and_verify
from edgecompress.stages.base import BuildContext, Stage
from edgecompress.stages.configs import ExportConfig


class Export(Stage):
    name = "export"
    Config = ExportConfig
    cfg: ExportConfig

    def run(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        for name in self.cfg.exporters or ctx.target.exporters:
            export_and_verify(EXPORTERS.get(name).make(self.cfg.options.get(name)), model, ctx)
        return model
