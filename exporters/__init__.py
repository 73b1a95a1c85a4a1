"""Keras -> ONNX exporters for Embedding models (needs the ``export`` extra: TensorFlow, tf2onnx, onnx).

    from exporters import export_keras
    report = export_keras(model, "model.onnx")
    print(report)

One pipeline, in :mod:`exporters.export`: :mod:`keras_model` describes the model (both Keras flavours),
:mod:`convert` runs tf2onnx, the ordered passes of :mod:`passes` rewrite the graph (with the primitives in
:mod:`rewrite`), :mod:`verify` checks it once against Keras and tf2onnx's graph, :mod:`writers` writes it
inline or with external data (big tables: :mod:`large`), and :mod:`report` summarises the result.
A new rewrite is one function and one line in :data:`exporters.passes.PASSES`.

The artifact contract (names, masks, metadata) is defined in :mod:`embed_runtime.contract`.
"""

from .errors import ExportError
from .export import EXPORTER_VERSION, ExportReport, export_keras

__all__ = ["EXPORTER_VERSION", "ExportError", "ExportReport", "export_keras"]
