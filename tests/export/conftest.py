"""Fixtures for exporter tests: they need the export extra (TensorFlow, tf-keras, tf2onnx, onnx)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest


@pytest.fixture(scope="session")
def k3():
    """Keras 3 on the TensorFlow backend."""
    import keras

    return keras


@pytest.fixture(scope="session")
def tfk():
    """tf-keras (Keras 2), the flavour of the seed's ``Embedding(1000, 64, input_length=10)`` example."""
    import tf_keras

    return tf_keras
