"""Small ONNX models built with the onnx helper API, so the runtime tests need no TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from embed_runtime.contract import EmbeddingInfo, ModelMetadata, mask_output_name

VOCAB = 50
DIM = 4


@dataclass
class Built:
    """A model file and the tables it looks ids up in."""

    path: Path
    tables: dict[str, np.ndarray]


def make_table(rows: int, dim: int, seed: int) -> np.ndarray:
    """A float32 table whose rows are easy to tell apart."""
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def build_model(
    path: Path,
    inputs: Sequence[tuple[str, int, int | None]],
    *,
    id_type: int = TensorProto.INT64,
    metadata: bool = True,
    mask: bool = True,
    dim: int = DIM,
    ir_version: int = 10,
) -> Built:
    """One Gather per input (``inputs``: name, input_dim, fixed length or None) plus a mask per input.

    Outputs: ``<name>_emb`` (``emb`` for a single input) and the masks named per the contract.
    """
    nodes, initializers, graph_inputs, outputs, infos = [], [], [], [], []
    tables: dict[str, np.ndarray] = {}
    zero = numpy_helper.from_array(np.array(0, dtype=helper.tensor_dtype_to_np_dtype(id_type)), "zero")
    initializers.append(zero)
    for i, (name, rows, length) in enumerate(inputs):
        layer = f"{name}_embedding"
        table = make_table(rows, dim, seed=i)
        tables[name] = table
        initializers.append(numpy_helper.from_array(table, f"{layer}/table"))
        seq: int | str = "sequence" if length is None else length
        graph_inputs.append(helper.make_tensor_value_info(name, id_type, ["batch", seq]))
        emb = "emb" if len(inputs) == 1 else f"{name}_emb"
        nodes.append(helper.make_node("Gather", [f"{layer}/table", name], [emb], axis=0))
        outputs.append(helper.make_tensor_value_info(emb, TensorProto.FLOAT, ["batch", seq, dim]))
        mask_name = (
            mask_output_name(layer, name, [(f"{n}_embedding", n) for n, _, _ in inputs]) if mask else None
        )
        if mask_name is not None:
            nodes.append(helper.make_node("Equal", [name, "zero"], [f"{name}/eq"]))
            nodes.append(helper.make_node("Not", [f"{name}/eq"], [mask_name]))
            outputs.append(helper.make_tensor_value_info(mask_name, TensorProto.BOOL, ["batch", seq]))
        infos.append(
            EmbeddingInfo(
                layer=layer,
                inputs=(name,),
                input_dim=rows,
                output_dim=dim,
                mask_zero=mask,
                padding_id=0 if mask else None,
                mask_output=mask_name,
            )
        )
    graph = helper.make_graph(nodes, "embeddings", graph_inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    if metadata:
        props = ModelMetadata(
            embeddings=tuple(infos),
            versions={"embed_runtime.keras_version": "3.0.0", "embed_runtime.exporter_version": "test"},
        ).to_props()
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Built(path, tables)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every test model, built once per session."""
    root = tmp_path_factory.mktemp("models")
    return {
        "single": build_model(root / "single.onnx", [("input_ids", VOCAB, None)]),
        "two": build_model(root / "two.onnx", [("user_id", 30, None), ("item_id", 70, None)]),
        "fixed": build_model(root / "fixed.onnx", [("input_ids", VOCAB, 5)]),
        "foreign": build_model(root / "foreign.onnx", [("input_ids", VOCAB, None)], metadata=False),
        "int32": build_model(root / "int32.onnx", [("input_ids", VOCAB, None)], id_type=TensorProto.INT32),
        "nomask": build_model(root / "nomask.onnx", [("input_ids", VOCAB, None)], mask=False),
    }


@pytest.fixture(scope="session")
def single(models: dict[str, Built]) -> Built:
    """The single-input, dynamic-length model with a ``mask`` output."""
    return models["single"]
