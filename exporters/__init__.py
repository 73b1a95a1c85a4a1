"""Keras -> ONNX exporters for Embedding models (needs the ``export`` extra: TensorFlow, tf2onnx, onnx).

    from exporters import export_keras
    report = export_keras(model, "model.onnx")
    print(report)

One pipeline, in :mod:`exporters.export`: :mod:`keras_model` describes the model (both Keras flavours),
:mod:`tracing` wraps it in a ``tf.function`` and :mod:`convert` runs tf2onnx on it, with each table traced
so that :mod:`tables` finds it by origin; the ordered passes of :mod:`passes` rewrite the graph (with the
primitives in :mod:`rewrite`, :mod:`dims` and :mod:`naming`), :mod:`verify` checks it once against Keras
(:mod:`reference`, :mod:`lookups`) and tf2onnx's graph, :mod:`writers` writes it inline or with external
data (big tables: :mod:`large`), and :mod:`report` summarises the result.
A new rewrite is one function and one line in :data:`exporters.passes.PASSES`.

The artifact contract (names, masks, metadata) is defined in :mod:`embed_runtime.contract`.
"""

from .errors import ExportError
from .export import EXPORTER_VERSION, ExportReport, export_keras

__all__ = ["EXPORTER_VERSION", "ExportError", "ExportReport", "export_keras"]
