"""Keras -> ONNX exporters for Embedding models (needs the ``export`` extra: TensorFlow, tf2onnx, onnx).

    from exporters import export_keras
    report = export_keras(model, "model.onnx")
    print(report)

The artifact contract (names, masks, metadata) is defined in :mod:`embed_runtime.contract`.
"""

from .errors import ExportError
from .export import EXPORTER_VERSION, ExportReport, export_keras

__all__ = ["EXPORTER_VERSION", "ExportError", "ExportReport", "export_keras"]
