"""Device-resident outputs: ``Runtime.run(inputs, device_outputs=True)``.

The outputs are bound with an ``IOBinding`` to the memory of the session's first execution provider
(:func:`output_device`) and returned as onnxruntime ``OrtValue`` objects in a :class:`DeviceOutputs` dict,
without a copy to the host. Each ``OrtValue`` speaks DLPack where the provider's memory can be shared
(CPU and CUDA; onnxruntime does not export WebGPU buffers): ``torch.from_dlpack(value)``,
``cupy.from_dlpack(value)`` or ``numpy.from_dlpack(value)`` share its memory, no copy.

Lifetime: an ``OrtValue`` owns a reference to its buffer, which lives until the last ``OrtValue`` or
DLPack consumer (a torch/cupy/numpy array made from it) that refers to it is gone; no later call of
the runtime writes into it (each call binds fresh outputs). The buffer comes from the session's
allocator, so keep the :class:`~embed_runtime.Runtime` alive while you use device outputs (onnxruntime
frees session-owned device memory with the session). A DLPack capsule is single-use: hand it to one
consumer, whose array then keeps the buffer alive.

Inputs (:func:`split_inputs`): what :meth:`~embed_runtime.Runtime.run` takes, plus ``OrtValue`` and
DLPack-capable objects (torch, cupy, jax arrays...).

* In host memory (``OrtValue`` on ``cpu``, DLPack device ``kDLCPU``): read through a zero-copy numpy
  view and validated exactly like numpy ids (shape, dtype, id range).
* In device memory: the ids cannot be range-checked without copying them to the host, which is the
  round trip this mode exists to avoid, so they are refused unless the call passes
  ``trust_device_ids=True``. Then they must already have the graph's dtype and are checked for rank,
  fixed lengths and shared axes (metadata only), and bound as they are; their values are **not**
  checked: an id outside ``[0, input_dim)`` reaches ``Gather``, which wraps negative ids to the end of
  the table without an error. Host ids in the same call are still checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from .errors import InferenceError, InputTypeError, InvalidInputError, first_line
from .inputs import check_shape, check_shared_dims, prepare
from .tensors import TensorInfo, check_batch_rows

if TYPE_CHECKING:
    from .runtime import Runtime

OUTPUT_DEVICES = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "WebGpuExecutionProvider": "webgpu",
    "DmlExecutionProvider": "dml",
}
"""onnxruntime device names (``OrtDevice``) of the providers that keep tensors in their own memory; the
outputs of any other provider (the CPU, and providers that hand back host memory) are bound to ``cpu``."""

DLPACK_CPU = 1
"""``kDLCPU``: the one DLPack device type read through a numpy view; any other is device memory."""


class DeviceOutputs(dict[str, Any]):
    """``{output name: onnxruntime.OrtValue}`` left where the provider wrote them.

    Attributes:
        device: where the outputs were bound, ``"cuda:0"``, ``"webgpu:0"``, ``"cpu:0"``...
    """

    def __init__(self, values: Mapping[str, Any], binding: Any, device: str):
        super().__init__(values)
        self.device = device
        self._binding = binding

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Host copies of every output (one device-to-host copy each, on every provider, WebGPU
        included). For a zero-copy host view of a CPU output use ``numpy.from_dlpack(value)``."""
        return dict(zip(self, self._binding.copy_outputs_to_cpu()))


def output_device(session: ort.InferenceSession) -> tuple[str, int]:
    """``(onnxruntime device name, device id)`` that the outputs of ``session`` are bound to."""
    provider = session.get_providers()[0]
    options = session.get_provider_options().get(provider, {})
    return OUTPUT_DEVICES.get(provider, "cpu"), int(options.get("device_id", 0))


def location(value: Any) -> str | None:
    """Where a tensor object's data lives: ``"cpu"``, a device (``"cuda"``, ``"DLPack device 2:0"``), or
    ``None`` for anything else (numpy arrays and lists take the ordinary path)."""
    if isinstance(value, ort.OrtValue):
        return str(value.device_name())
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack_device__"):
        return None
    kind, index = value.__dlpack_device__()
    return "cpu" if int(kind) == DLPACK_CPU else f"DLPack device {int(kind)}:{int(index)}"


def host_view(value: Any) -> np.ndarray:
    """A zero-copy numpy view of a tensor object in host memory."""
    return value.numpy() if isinstance(value, ort.OrtValue) else np.from_dlpack(value)


def _device_value(value: Any, info: TensorInfo, where: str, trusted: bool) -> Any:
    """The ``OrtValue`` of a device-resident input, after the checks that need no copy (see the module
    docstring); refused unless ``trusted``."""
    if not trusted:
        raise InvalidInputError(
            f"input {info.name!r} is in {where} memory: its ids cannot be range-checked there without a "
            "copy to the host; pass host ids (numpy, a list, a CPU tensor), or trust_device_ids=True to "
            "skip the id check (an id outside [0, input_dim) then reaches Gather, which silently wraps "
            "negative ids)"
        )
    try:
        ortvalue = value if isinstance(value, ort.OrtValue) else ort.OrtValue.from_dlpack(value)
    except Exception as exc:  # onnxruntime raises plain RuntimeError/TypeError for capsules it cannot take
        raise InputTypeError(
            f"input {info.name!r}: onnxruntime cannot take this {where} tensor through DLPack: {first_line(exc)}"
        ) from exc
    want = f"tensor({info.dtype.name})"
    if ortvalue.data_type() != want:
        raise InputTypeError(
            f"input {info.name!r} on {where} is {ortvalue.data_type()}; device ids are not converted, "
            f"send {want}"
        )
    return ortvalue


def _shape_only(ortvalue: Any) -> np.ndarray:
    """A zero-strided array with the shape of an ``OrtValue``, so that the shape rules can read it."""
    return np.broadcast_to(np.zeros((), np.bool_), tuple(ortvalue.shape()))


def split_inputs(
    rt: Runtime, inputs: Any, single_sequence: bool, trust_device_ids: bool
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(validated host feeds, device OrtValues)`` for :func:`run_on_device`."""
    infos = {i.name: i for i in rt.inputs}
    if isinstance(inputs, Mapping):
        items = dict(inputs)
    elif len(infos) == 1:
        items = {next(iter(infos)): inputs}
    else:  # several inputs but no dict: the ordinary validation says what is wrong
        return rt.prepare(inputs, single_sequence=single_sequence), {}
    host: dict[str, Any] = {}
    device: dict[str, Any] = {}
    for name, value in items.items():
        where = location(value)
        if where is not None and where != "cpu" and name in infos:
            device[name] = _device_value(value, infos[name], where, trust_device_ids)
        else:  # unknown names go with the host inputs, whose validation reports them
            host[name] = host_view(value) if where == "cpu" else value
    if not device:
        ordinary = host if isinstance(inputs, Mapping) else next(iter(host.values()))
        return rt.prepare(ordinary, single_sequence=single_sequence), {}
    if set(items) != set(infos) or single_sequence:
        raise InvalidInputError(
            f"with device inputs, pass a dict of exactly the model's inputs ({', '.join(infos)}) and no "
            f"single_sequence; got {', '.join(map(repr, items))}"
        )
    feeds = {name: prepare(value, infos[name]) for name, value in host.items()}
    shapes = {name: _shape_only(value) for name, value in device.items()}
    for name, shape in shapes.items():
        check_shape(shape, infos[name])
    check_shared_dims({**feeds, **shapes}, rt.inputs)
    return feeds, device


def run_on_device(
    rt: Runtime,
    inputs: Any,
    names: Sequence[str],
    out: object,
    single_sequence: bool,
    trust_device_ids: bool,
) -> DeviceOutputs:
    """The body of ``rt.run(inputs, device_outputs=True)``: the outputs ``names`` as ``OrtValue`` objects
    bound to :func:`output_device` (see the module docstring for inputs and lifetime)."""
    if out is not None:
        raise InvalidInputError("out= writes host arrays; it cannot be combined with device_outputs=True")
    feeds, on_device = split_inputs(rt, inputs, single_sequence, trust_device_ids)
    kind, index = output_device(rt.session)
    binding = rt.session.io_binding()
    try:
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for name, ortvalue in on_device.items():
            binding.bind_ortvalue_input(name, ortvalue)
        for name in names:
            binding.bind_output(name, kind, index)
        rt.session.run_with_iobinding(binding)
    except Exception as exc:  # onnxruntime raises its own pybind types (Fail, RuntimeException...)
        empty = next((name for name, a in feeds.items() if a.size == 0), None)
        hint = "" if empty is None else f"; input {empty!r} is empty: send at least one id per row"
        raise (InferenceError if empty is None else InvalidInputError)(
            f"onnxruntime {ort.__version__} failed running {rt.path.name} with outputs bound to "
            f"{kind}:{index}: {first_line(exc)}{hint}"
        ) from exc
    values = dict(zip(names, binding.get_outputs()))
    check_batch_rows(
        {name: _shape_only(value) for name, value in values.items()},
        {**feeds, **{name: _shape_only(value) for name, value in on_device.items()}},
        rt._batch_axes,
        rt.path.name,
    )
    return DeviceOutputs(values, binding, f"{kind}:{index}")
