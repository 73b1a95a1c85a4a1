"""``rt.run(..., device_outputs=True)`` on the CPU: OrtValue outputs handed out without a copy (DLPack),
their lifetime, OrtValue/DLPack inputs checked through zero-copy views, and device-resident ids refused
unless trusted (a stand-in object that reports a CUDA device plays the device tensor)."""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import embed_runtime
from embed_runtime import InferenceError, InputTypeError, InvalidInputError
from embed_runtime.device import DeviceOutputs, output_device, split_inputs

from .conftest import VOCAB, Built

DLPACK_CUDA = 2
MODELS = Path(__file__).resolve().parents[2] / "models"


class Tensor:
    """A DLPack-only tensor (no ``__array__``) over a numpy array, reporting the device it is given."""

    def __init__(self, array: np.ndarray, device: tuple[int, int] = (1, 0)):
        self.array = array
        self.device = device

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.array.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.device


def ids_array() -> np.ndarray:
    return np.array([[4, 20, 7, 0], [9, 3, 0, 0]], dtype=np.int64)


def test_outputs_are_ortvalues_shared_through_dlpack(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    ids = ids_array()
    result = rt.run(ids, device_outputs=True)
    assert isinstance(result, DeviceOutputs) and result.device == "cpu:0"
    assert list(result) == ["emb", "mask"]
    for value in result.values():
        assert isinstance(value, ort.OrtValue) and value.device_name() == "cpu"
        assert np.from_dlpack(value).ctypes.data == value.data_ptr()  # zero-copy: the OrtValue's buffer
    np.testing.assert_array_equal(np.from_dlpack(result["emb"]), single.tables["input_ids"][ids])
    np.testing.assert_array_equal(np.from_dlpack(result["mask"]), ids != 0)
    host = result.to_numpy()
    np.testing.assert_array_equal(host["emb"], single.tables["input_ids"][ids])
    assert host["emb"].ctypes.data != result["emb"].data_ptr()  # to_numpy copies
    assert type(rt.run(ids)["emb"]) is np.ndarray  # the ordinary path is unchanged


def test_a_dlpack_view_outlives_its_result_and_later_calls(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    ids = ids_array()
    result = rt.run(ids, device_outputs=True)
    view = np.from_dlpack(result["emb"])
    address = result["emb"].data_ptr()
    del result
    gc.collect()
    again = rt.run(ids + 1, device_outputs=True)  # fresh outputs each call: the held buffer is not reused
    rt.run(ids + 2)
    assert again["emb"].data_ptr() != address
    np.testing.assert_array_equal(view, single.tables["input_ids"][ids])


def test_host_tensor_inputs_are_checked_through_a_zero_copy_view(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    ids = ids_array()
    value = ort.OrtValue.ortvalue_from_numpy(ids)
    feeds, on_device = split_inputs(rt, value, single_sequence=False, trust_device_ids=False)
    assert feeds["input_ids"].ctypes.data == value.data_ptr() and not on_device
    feeds, _ = split_inputs(rt, Tensor(ids), single_sequence=False, trust_device_ids=False)
    assert feeds["input_ids"].ctypes.data == ids.ctypes.data
    np.testing.assert_array_equal(
        rt.run(value, device_outputs=True).to_numpy()["emb"], single.tables["input_ids"][ids]
    )
    for bad in (VOCAB, -1):
        wrong = ids.copy()
        wrong[1, 2] = bad
        for given in (ort.OrtValue.ortvalue_from_numpy(wrong), Tensor(wrong)):
            with pytest.raises(InvalidInputError, match=rf"'input_ids': id {bad} at position \[1, 2\]"):
                rt.run(given, device_outputs=True)


def test_device_ids_are_refused_unless_trusted(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    ids = ids_array()
    ids[0, 0] = -1
    on_cuda = Tensor(ids, (DLPACK_CUDA, 0))
    with pytest.raises(
        InvalidInputError, match=r"'input_ids' is in DLPack device 2:0 memory.*trust_device_ids"
    ):
        rt.run(on_cuda, device_outputs=True)
    # trusted: bound as it is, its values unchecked: Gather wraps -1 to the last row, as documented
    emb = rt.run(on_cuda, device_outputs=True, trust_device_ids=True).to_numpy()["emb"]
    np.testing.assert_array_equal(emb[0, 0], single.tables["input_ids"][-1])
    # what can be checked without a copy still is: dtype and shape
    with pytest.raises(InputTypeError, match=r"tensor\(int32\).*send tensor\(int64\)"):
        rt.run(Tensor(ids.astype(np.int32), (DLPACK_CUDA, 0)), device_outputs=True, trust_device_ids=True)
    with pytest.raises(InvalidInputError, match="has rank 1"):
        rt.run(Tensor(ids[0], (DLPACK_CUDA, 0)), device_outputs=True, trust_device_ids=True)


def test_mixed_host_and_device_inputs(models: dict[str, Built]) -> None:
    rt = embed_runtime.load(models["two"].path, providers="cpu")
    users = np.array([[3], [5]], dtype=np.int64)
    result = rt.run(
        {"user_id": Tensor(users, (DLPACK_CUDA, 0)), "item_id": [[10], [11]]},
        device_outputs=True,
        trust_device_ids=True,
    ).to_numpy()
    np.testing.assert_array_equal(result["item_id_emb"], models["two"].tables["item_id"][[[10], [11]]])
    np.testing.assert_array_equal(result["user_id_emb"], models["two"].tables["user_id"][users])
    with pytest.raises(InvalidInputError, match="'item_id': id 70"):  # host ids are still checked
        rt.run(
            {"user_id": Tensor(users, (DLPACK_CUDA, 0)), "item_id": [[70], [1]]},
            device_outputs=True,
            trust_device_ids=True,
        )
    with pytest.raises(InvalidInputError, match="the graph requires the same 'batch' size"):
        rt.run(
            {"user_id": Tensor(users, (DLPACK_CUDA, 0)), "item_id": [[1]]},
            device_outputs=True,
            trust_device_ids=True,
        )
    with pytest.raises(InvalidInputError, match="exactly the model's inputs"):
        rt.run({"user_id": Tensor(users, (DLPACK_CUDA, 0))}, device_outputs=True, trust_device_ids=True)


def test_options_with_device_outputs(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    assert list(rt.run(ids_array(), device_outputs=True, outputs="mask")) == ["mask"]
    ragged = rt.run([[1, 2, 3], [4]], device_outputs=True).to_numpy()["mask"]
    np.testing.assert_array_equal(ragged, [[True, True, True], [True, False, False]])
    one = rt.run([5, 6], device_outputs=True, single_sequence=True)
    assert one["emb"].shape() == [1, 2, 4]
    assert rt.run(np.zeros((0, 3), np.int64), device_outputs=True).to_numpy()["emb"].shape == (0, 3, 4)
    with pytest.raises(InvalidInputError, match="out= writes host arrays"):
        rt.run(ids_array(), device_outputs=True, out={"mask": np.empty((2, 4), bool)})  # type: ignore[call-overload]


def test_outputs_are_bound_to_the_first_providers_memory() -> None:
    def session(provider: str, options: dict[str, str]) -> Any:
        return SimpleNamespace(
            get_providers=lambda: [provider, "CPUExecutionProvider"],
            get_provider_options=lambda: {provider: options, "CPUExecutionProvider": {}},
        )

    assert output_device(session("CUDAExecutionProvider", {"device_id": "1"})) == ("cuda", 1)
    assert output_device(session("TensorrtExecutionProvider", {"device_id": "0"})) == ("cuda", 0)
    assert output_device(session("WebGpuExecutionProvider", {})) == ("webgpu", 0)
    assert output_device(session("OpenVINOExecutionProvider", {})) == ("cpu", 0)  # host memory


def test_ids_onnxruntime_cannot_run_are_an_input_error() -> None:
    rt = embed_runtime.load(MODELS / "recurrent" / "model.onnx", providers="cpu")
    with pytest.raises(InvalidInputError, match="input 'token_ids' is empty: send at least one id per row"):
        rt.run(np.zeros((3, 0), np.int64), device_outputs=True)


def test_outputs_with_another_batch_are_refused(single: Built) -> None:
    rt = embed_runtime.load(single.path, providers="cpu")
    real = rt.session

    class Binding:
        """An IOBinding whose outputs lose their last row."""

        def __init__(self) -> None:
            self.inner = real.io_binding()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def get_outputs(self) -> list[Any]:
            return [ort.OrtValue.ortvalue_from_numpy(v.numpy()[:-1].copy()) for v in self.inner.get_outputs()]

    class Lying:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def io_binding(self) -> Binding:
            return Binding()

        def run_with_iobinding(self, binding: Binding) -> None:
            real.run_with_iobinding(binding.inner)

    rt.session = Lying()
    with pytest.raises(
        InferenceError, match=r"1 rows of 'emb' for 2 rows of 'input_ids'.*\(shape \(1, 4, 4\)\)"
    ):
        rt.run(ids_array(), device_outputs=True)
