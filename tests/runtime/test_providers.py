"""Loading safety, metadata, tensor descriptions, session options and execution-provider selection
(tested on the CPU; plugin execution providers are simulated)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import embed_runtime
from embed_runtime import ModelLoadError, ProviderError, RuntimeOptions, contract, options, providers, tensors
from embed_runtime.contract import mask_output_name

from .conftest import DIM, VOCAB, Built


def test_tensor_infos_and_metadata(single: Built) -> None:
    rt = embed_runtime.load(single.path)
    (inp,) = rt.inputs
    assert (inp.name, inp.dtype, inp.shape, inp.input_dim, inp.input_length) == (
        "input_ids",
        np.dtype(np.int64),
        (None, None),
        VOCAB,
        None,
    )
    assert inp.dim_names == ("batch", "sequence")
    assert [(o.name, o.dtype, o.shape) for o in rt.outputs] == [
        ("emb", np.dtype(np.float32), (None, None, DIM)),
        ("mask", np.dtype(np.bool_), (None, None)),
    ]
    meta = rt.metadata
    assert meta.is_embed_runtime_artifact
    (emb,) = meta.embeddings
    assert (emb.input_dim, emb.output_dim, emb.mask_zero, emb.padding_id, emb.mask_output) == (
        VOCAB,
        DIM,
        True,
        0,
        "mask",
    )
    assert meta.versions["embed_runtime.keras_version"] == "3.0.0"
    assert rt.path == single.path
    assert rt.providers == ["CPUExecutionProvider"]
    with pytest.raises(dataclasses_frozen()):
        inp.name = "x"  # type: ignore[misc]


def dataclasses_frozen() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_version_and_exports() -> None:
    assert embed_runtime.__version__ != ""
    for name in (
        "EmbedRuntimeError",
        "InvalidInputError",
        "InputTypeError",
        "ModelLoadError",
        "ProviderError",
        "InferenceError",
        "ConfigurationError",
    ):
        assert issubclass(getattr(embed_runtime, name), embed_runtime.EmbedRuntimeError)
    assert "CPUExecutionProvider" in embed_runtime.available_providers()


def test_tensor_spec_is_the_old_name_of_tensor_info(single: Built) -> None:
    assert embed_runtime.TensorSpec is embed_runtime.TensorInfo
    rt = embed_runtime.load(single.path, providers="cpu")
    assert all(isinstance(t, embed_runtime.TensorInfo) for t in [*rt.inputs, *rt.outputs])


def test_contract_docstring_names_every_mask_output() -> None:
    """One layer with mask_zero shared by two inputs gets ``<layer>_<input>_mask``: the docstring says so."""
    assert mask_output_name("emb", "query", [("emb", "query"), ("emb", "doc")]) == "emb_query_mask"
    for pattern in ("``mask``", "``<layer name>_mask``", "``<layer>_<input>_mask``"):
        assert pattern in (contract.__doc__ or ""), pattern


def test_missing_directory_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        embed_runtime.load(tmp_path / "nope.onnx")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ModelLoadError, match="is a directory"):
        embed_runtime.load(tmp_path / "dir")
    garbage = tmp_path / "random.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        embed_runtime.load(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError):
        embed_runtime.load(empty)


def test_directory_hint(tmp_path: Path, single: Built) -> None:
    (tmp_path / "model.onnx").write_bytes(single.path.read_bytes())
    with pytest.raises(ModelLoadError, match="did you mean"):
        embed_runtime.load(tmp_path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated(tmp_path: Path, single: Built, fraction: float) -> None:
    data = single.path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError):
        embed_runtime.load(cut)


def external_model(folder: Path, location: str) -> Path:
    """A Gather model whose table is stored as external data at ``location`` (relative to ``folder``)."""
    table = numpy_helper.from_array(np.ones((VOCAB, DIM), np.float32), "table")
    table.ClearField("raw_data")
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(VOCAB * DIM * 4))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0)],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "sequence", DIM])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full((VOCAB, DIM), 7, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    for location in ("../secret.bin", str(secret)):
        with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
            embed_runtime.load(external_model(folder, location))


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    (tmp_path / "table.bin").write_bytes(np.full((VOCAB, DIM), 7, np.float32).tobytes())
    rt = embed_runtime.load(external_model(tmp_path, "table.bin"))
    assert (rt.run([[1, 2]])["emb"] == 7).all()


def test_malformed_metadata(tmp_path: Path, single: Built) -> None:
    model = onnx.load(str(single.path))
    for prop in model.metadata_props:
        if prop.key == "embed_runtime.embeddings":
            prop.value = "{not json"
    path = tmp_path / "bad_meta.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="cannot read its embed_runtime metadata"):
        embed_runtime.load(path)


def test_auto_chooses_and_logs(single: Built, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="embed_runtime"):
        rt = embed_runtime.load(single.path)
    assert rt.providers == ["CPUExecutionProvider"]
    assert any("chose CPUExecutionProvider" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embed_runtime"):
        embed_runtime.load(single.path, options=RuntimeOptions(log_provider_choice=False))
    assert not caplog.records


def test_auto_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        providers,
        "available_providers",
        lambda: ["DmlExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert providers.resolve_providers("auto") == (["CUDAExecutionProvider", "CPUExecutionProvider"], True)
    monkeypatch.setattr(
        providers, "available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers.resolve_providers("auto") == (["CPUExecutionProvider"], True)
    monkeypatch.setattr(
        providers,
        "available_providers",
        lambda: ["OpenVINOExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"],
    )
    assert providers.resolve_providers("AUTO")[0][0] == "TensorrtExecutionProvider"


def test_auto_warns_on_fallback(
    single: Built, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime may drop a provider it cannot initialise; "auto" then warns instead of failing."""
    monkeypatch.setattr(
        providers, "resolve_providers", lambda p: (["CUDAExecutionProvider", "CPUExecutionProvider"], True)
    )
    real = ort.InferenceSession

    def dropping(path: str, sess_options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", dropping)
    with caplog.at_level(logging.INFO, logger="embed_runtime"):
        rt = embed_runtime.load(single.path)
    assert rt.providers == ["CPUExecutionProvider"]
    assert any(r.levelno == logging.WARNING and "fell back" in r.getMessage() for r in caplog.records)


def test_explicit_providers(single: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    for request in ("cpu", "CPU", ["CPUExecutionProvider"], [("CPUExecutionProvider", {})]):
        assert embed_runtime.load(single.path, providers=request).providers == ["CPUExecutionProvider"]
    with pytest.raises(
        ProviderError, match=r"'CUDAExecutionProvider' was requested but is not available.*available: "
    ):
        embed_runtime.load(single.path, providers=["cuda", "cpu"])
    with pytest.raises(ProviderError, match="not available"):
        embed_runtime.load(single.path, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ProviderError, match="empty"):
        embed_runtime.load(single.path, providers=[])
    # available but dropped by onnxruntime at session creation: explicit requests fail loudly
    monkeypatch.setattr(
        providers, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    real = ort.InferenceSession
    monkeypatch.setattr(
        ort,
        "InferenceSession",
        lambda path, sess_options, providers: real(
            path, sess_options=sess_options, providers=["CPUExecutionProvider"]
        ),
    )
    with pytest.raises(
        ProviderError,
        match=r"requested providers \['CUDAExecutionProvider'\] but onnxruntime is using \['CPUExecutionProvider'\]",
    ):
        embed_runtime.load(single.path, providers="cuda")


def fake_plugin(
    monkeypatch: pytest.MonkeyPatch, module: str, ep_name: str, devices: list[SimpleNamespace]
) -> list[object]:
    """Install a fake plugin package ``module`` whose EP is ``ep_name`` with these devices, and fake the
    onnxruntime calls that register it and add its devices; returns the list those calls are logged in."""
    calls: list[object] = []
    package = ModuleType(module)
    package.get_ep_name = lambda: ep_name  # type: ignore[attr-defined]
    package.get_library_path = lambda: f"/nonexistent/lib{module}.so"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module, package)
    monkeypatch.setattr(providers, "_registered", set())
    monkeypatch.setattr(
        ort, "register_execution_provider_library", lambda name, path: calls.append((name, path))
    )
    monkeypatch.setattr(ort, "get_ep_devices", lambda: devices)

    class Options(ort.SessionOptions):  # type: ignore[misc]
        def add_provider_for_devices(self, chosen: list[SimpleNamespace], opts: dict[str, str]) -> None:
            calls.append(("devices", [d.vendor for d in chosen]))

    monkeypatch.setattr(ort, "SessionOptions", Options)
    return calls


def test_webgpu_plugin_path(single: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin EP is registered once and added through its device (simulated: no GPU here)."""
    devices = [SimpleNamespace(ep_name="WebGpuExecutionProvider", vendor="gpu")]
    calls = fake_plugin(monkeypatch, "onnxruntime_ep_webgpu", "WebGpuExecutionProvider", devices)
    assert embed_runtime.available_providers()[0] == "WebGpuExecutionProvider"
    assert providers.resolve_providers("auto")[0] == ["WebGpuExecutionProvider", "CPUExecutionProvider"]
    assert providers.canonical_name("webgpu") == "WebGpuExecutionProvider"
    with pytest.raises(
        ProviderError, match=r"requested providers \['WebGpuExecutionProvider'\] but onnxruntime is using"
    ):
        embed_runtime.load(single.path, providers="webgpu")  # the fake device adds nothing: CPU only
    assert calls == [("webgpu", "/nonexistent/libonnxruntime_ep_webgpu.so"), ("devices", ["gpu"])]
    devices.clear()
    with pytest.raises(ProviderError, match="WebGpuExecutionProvider is installed but found no device"):
        embed_runtime.load(single.path, providers="webgpu")
    assert len(calls) == 2  # registered once per process, not once per session


def test_a_second_plugin_is_one_more_row(single: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin EP whose real name differs from its stand-in name, with a device filter: table rows only."""
    devices = [SimpleNamespace(ep_name="FakeEp", vendor=v) for v in ("first", "second")]
    calls = fake_plugin(monkeypatch, "onnxruntime_ep_fake", "FakeEp", devices)
    row = providers.PluginEP(
        provider="FakeExecutionProvider",
        module="onnxruntime_ep_fake",
        registration_name="fake",
        device_filter=lambda device: device.vendor == "second",
    )
    monkeypatch.setattr(providers, "PLUGIN_EPS", (*providers.PLUGIN_EPS, row))
    monkeypatch.setitem(providers.ALIASES, "fake", "FakeExecutionProvider")
    assert embed_runtime.available_providers()[0] == "FakeEp"
    assert providers.canonical_name("fake") == providers.canonical_name("FakeExecutionProvider") == "FakeEp"
    assert providers.resolve_providers(["fake", "cpu"]) == (["FakeEp", "CPUExecutionProvider"], False)
    assert providers.resolve_providers("auto")[0] == ["CPUExecutionProvider"]  # not in AUTO_ORDER
    with pytest.raises(ProviderError, match=r"requested providers \['FakeEp'\] but onnxruntime is using"):
        embed_runtime.load(single.path, providers="fake")
    assert calls == [("fake", "/nonexistent/libonnxruntime_ep_fake.so"), ("devices", ["second"])]
    monkeypatch.delitem(sys.modules, "onnxruntime_ep_fake")
    monkeypatch.setattr(providers, "PLUGIN_EPS", (row,))  # the row stays, the package is gone
    with pytest.raises(ProviderError, match="'FakeExecutionProvider' was requested but is not available"):
        embed_runtime.load(single.path, providers="fake")


def test_threads_and_options(single: Built) -> None:
    rt = embed_runtime.load(single.path, threads=1)
    assert rt.options.intra_op_threads == 1 and not rt.options.allow_spinning
    so = options.session_options(RuntimeOptions(intra_op_threads=2, inter_op_threads=1, allow_spinning=True))
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert (
        options.session_options(RuntimeOptions()).get_session_config_entry("session.intra_op.allow_spinning")
        == "0"
    )
    assert (
        embed_runtime.load(single.path, options=RuntimeOptions(graph_optimization_level="disable"))
        .run([[1]])["mask"]
        .all()
    )


def test_dtype_map() -> None:
    assert tensors.numpy_dtype("tensor(int32)") == np.int32
    assert tensors.numpy_dtype("seq(tensor(float))") == np.dtype(object)


def test_load_accepts_pathlike_and_str(single: Built) -> None:
    assert embed_runtime.load(os.fspath(single.path)).path == single.path
