"""Reproducible artifacts (issue 11, item 6): one trained model exported in two processes gives the same
bytes, and the report's sha256 is that of the file written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporters import export_keras

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import hashlib, json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import keras, tf_keras
from exporters import export_keras

def build(k, kind):
    k.utils.set_random_seed(0)
    ids = k.Input((None,), dtype="int32", name="ids")
    x = k.layers.Embedding(40, 6, mask_zero=True, name="tok")(ids)
    x = k.layers.GlobalAveragePooling1D()(x) if kind == "pooled" else k.layers.LSTM(4)(x)
    model = k.Model(ids, k.layers.Dense(1, name="score")(x))
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 40, (64, 7)), rng.normal(size=(64, 1)), epochs=1, batch_size=16, verbose=0)
    return model

found = {}
for name, k in (("k3", keras), ("tfk", tf_keras)):
    for kind in ("pooled", "lstm"):
        model = build(k, kind)
        weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()
        path = os.path.join(sys.argv[1], f"{name}-{kind}.onnx")
        report = export_keras(model, path)
        found[f"{name}-{kind}"] = {"weights": weights, "sha256": report.sha256, "path": path}
print(json.dumps(found))
"""


def test_same_model_exported_in_two_processes_gives_identical_bytes(tmp_path):
    """tf2onnx names nodes from per-process counters and orders some things by hash order; each process
    here gets another hash seed. Both flavours, a pooled model and an LSTM (a Loop subgraph)."""
    runs = []
    for seed in ("1", "2"):
        folder = tmp_path / seed
        folder.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(folder)], env=env, stdout=subprocess.PIPE, text=True
            )
        )
    results = []
    for process in runs:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    assert sorted(first) == ["k3-lstm", "k3-pooled", "tfk-lstm", "tfk-pooled"]
    for model, a in first.items():
        b = second[model]
        assert a["weights"] == b["weights"], f"{model}: training was not reproducible; the test cannot judge"
        one, two = Path(a["path"]).read_bytes(), Path(b["path"]).read_bytes()
        assert a["sha256"] == hashlib.sha256(one).hexdigest()  # the report's hash is the file's
        assert one == two, f"{model}: two exports differ"


def test_report_hashes_what_was_written_with_external_data(k3, tmp_path):
    """A table above the threshold goes to a data file: the report gives the sha256 of the ``.onnx`` and
    of the data file, and a second export of the model writes the same bytes."""
    ids = k3.Input((None,), dtype="int32", name="ids")
    model = k3.Model(ids, k3.layers.Embedding(300, 8, mask_zero=True, name="big")(ids))
    reports = [
        export_keras(model, tmp_path / str(i) / "m.onnx", external_data_threshold="1KiB") for i in range(2)
    ]
    for report in reports:
        assert report.external_data is not None
        assert report.sha256 == hashlib.sha256(report.path.read_bytes()).hexdigest()
        assert report.external_data_sha256 == hashlib.sha256(report.external_data.read_bytes()).hexdigest()
    first, second = reports
    assert first.path.read_bytes() == second.path.read_bytes()
    assert (first.sha256, first.external_data_sha256) == (second.sha256, second.external_data_sha256)
