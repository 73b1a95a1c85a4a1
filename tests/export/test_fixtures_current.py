"""The committed reference artifacts (``models/<name>/model.onnx`` + ``golden.npz``) still match what
their ``train.py`` produces: regenerate each export from its script and compare.

Run ``python -m models.build`` to regenerate the committed files when this fails on purpose.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `models` is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import models  # noqa: E402
from tests.reference import exported, trained  # noqa: E402

pytestmark = pytest.mark.tf

REBUILD = "committed artifacts are stale: run `python -m models.build {name}` and commit models/{name}/"


def _golden(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path) as data:
        inputs = {k.removeprefix("input."): data[k] for k in data.files if k.startswith("input.")}
        outputs = {k.removeprefix("output."): data[k] for k in data.files if k.startswith("output.")}
    return inputs, outputs


def _graph_summary(path: Path) -> dict[str, Any]:
    """Inputs and outputs (name, dtype, dims), op type counts, opset and the contract's embedding facts."""
    import onnx

    from embed_runtime.contract import ModelMetadata

    model = onnx.load(str(path))

    def io(values: Any) -> list[tuple[str, int, list[Any]]]:
        rows = []
        for v in values:
            t = v.type.tensor_type
            # auto-generated dim names (tf2onnx's unk__N) vary between exports; named and static dims do not
            dims = [
                d.dim_value or ("unk" if d.dim_param.startswith("unk__") else d.dim_param)
                for d in t.shape.dim
            ]
            rows.append((v.name, t.elem_type, dims))
        return sorted(rows)

    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    return {
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "ops": dict(collections.Counter(n.op_type for n in model.graph.node)),
        "opset": sorted((o.domain, o.version) for o in model.opset_import),
        "embeddings": sorted(e.to_dict().__repr__() for e in meta.embeddings),
    }


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float, what: str) -> None:
    assert set(got) >= set(want), f"{what}: missing {sorted(set(want) - set(got))}"
    for name, expected in want.items():
        assert got[name].shape == expected.shape, f"{what}: {name} shape"
        if expected.dtype == np.bool_:
            np.testing.assert_array_equal(got[name], expected, err_msg=f"{what}: mask {name}")
        else:
            np.testing.assert_allclose(got[name], expected, rtol=0, atol=atol, err_msg=f"{what}: {name}")


@pytest.fixture(scope="module", params=models.NAMES)
def regenerated(request: pytest.FixtureRequest) -> tuple[models.ModelInfo, Any, Path]:
    """(info, trained Keras model, freshly exported .onnx) of the committed flavour, from ``train.py``."""
    import tensorflow  # noqa: F401  (the full environment has the export extra: a broken install must fail)
    import tf2onnx  # noqa: F401

    info = models.info(request.param)
    path, _ = exported(info.name, info.committed_flavour)
    return info, trained(info.name, info.committed_flavour), path


def test_committed_files_exist() -> None:
    """Every reference model has its committed ONNX file and golden arrays."""
    for info in models.all_models():
        assert info.onnx_path.is_file(), info.onnx_path
        assert info.golden_path.is_file(), info.golden_path


def _keras_now(info: models.ModelInfo, model: Any, path: Path, inputs: dict[str, np.ndarray]) -> Any:
    """The retrained Keras model's outputs and masks on the golden inputs (on the golden strings for a
    model that takes text)."""
    from models._common import keras_masks, keras_predict

    if info.text:
        run = info.train_module().keras_run(model, _texts(info))
        return {k.removeprefix("output."): v for k, v in run.items() if k.startswith("output.")}
    keras_now = keras_predict(model, [i.name for i in info.inputs], info.outputs, inputs)
    keras_now.update(keras_masks(model, path, inputs))
    return keras_now


def _texts(info: models.ModelInfo) -> list[str]:
    texts: list[str] = json.loads((info.folder / "texts.json").read_text(encoding="utf-8"))
    return texts


def test_golden_inputs_current(regenerated: tuple[models.ModelInfo, Any, Path]) -> None:
    """``golden.npz`` holds exactly the inputs ``train.golden_inputs()`` makes, int64; for a text model,
    ``texts.json`` the strings ``train.golden_texts()`` gives and ``golden.npz`` the ids Keras gives them."""
    info, model, _ = regenerated
    inputs, outputs = _golden(info.golden_path)
    train = info.train_module()
    if info.text:
        assert _texts(info) == train.golden_texts(), REBUILD.format(name=info.name)
        run = train.keras_run(model, _texts(info))
        expected = {k.removeprefix("input."): v for k, v in run.items() if k.startswith("input.")}
    else:
        expected = train.golden_inputs()
    assert sorted(inputs) == sorted(expected), REBUILD.format(name=info.name)
    for name, ids in expected.items():
        assert inputs[name].dtype == np.int64
        np.testing.assert_array_equal(inputs[name], ids, err_msg=REBUILD.format(name=info.name))
    assert set(outputs) == set(info.outputs) | set(info.masks)


def test_graph_current(regenerated: tuple[models.ModelInfo, Any, Path]) -> None:
    """Same graph inputs, outputs, op types, opset and embedding metadata as a fresh export."""
    info, _, path = regenerated
    assert _graph_summary(info.onnx_path) == _graph_summary(path), REBUILD.format(name=info.name)


def test_outputs_current(regenerated: tuple[models.ModelInfo, Any, Path]) -> None:
    """On the golden inputs, the committed outputs match the retrained Keras model, the fresh export and
    the committed ONNX file, within the model's parity tolerance; masks exactly."""
    from embed_runtime import load

    info, model, path = regenerated
    inputs, committed = _golden(info.golden_path)
    keras_now = _keras_now(info, model, path, inputs)
    stale = REBUILD.format(name=info.name)
    _assert_close(keras_now, committed, info.atol, f"retrained Keras vs golden.npz ({stale})")
    feeds: Any = inputs if len(inputs) > 1 else next(iter(inputs.values()))
    fresh = load(path, providers="cpu").run(feeds)
    _assert_close(fresh, committed, info.atol, f"fresh export vs golden.npz ({stale})")
    stored = load(info.onnx_path, providers="cpu").run(feeds)
    _assert_close(stored, committed, info.atol, f"committed model.onnx vs golden.npz ({stale})")
