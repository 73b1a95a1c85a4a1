"""The :class:`Runtime`: one loaded model, and the story of a call.

:meth:`Runtime.run` takes, in order:

1. the hot path, when it answers: :meth:`LookupPath.run_hot <embed_runtime.lookup.LookupPath.run_hot>`
   for a model whose outputs are proven lookups (numpy ``take`` on the tables read at load), else the
   repeated-shape :meth:`Binder.run_hot <embed_runtime.binding.Binder.run_hot>` (ids checked in a bound
   buffer);
2. validation, :meth:`Runtime.prepare` (the rules live in :mod:`embed_runtime.inputs`);
3. the run: by the lookup path when every requested output is a proven lookup or mask, else through this
   thread's bound buffers (:class:`~embed_runtime.binding.Binder`) when it has them for these shapes, else
   plainly with ``InferenceSession.run`` (the binder then learns the shapes); with ``out=``, caller-owned
   arrays are bound as outputs, so a big batch is written straight into them;
4. the result: ``{output name: array}``. :attr:`Runtime.execution` says which path serves the model.

:meth:`Runtime.run_batched` streams chunks of :meth:`Runtime.run` with memory bounded by the chunk size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from . import tensors
from .artifact import check_data_files
from .batching import run_chunks
from .binding import Binder, Results, run_into
from .contract import ModelMetadata
from .device import DeviceOutputs, run_on_device
from .errors import EmbedRuntimeError, InferenceError, InvalidInputError, ModelLoadError, first_line
from .inputs import FastCheck, prepare_all
from .lookup import build as lookup_path
from .options import QUIET_RUN, RuntimeOptions
from .providers import Providers, create_session
from .tensors import check_out, expected_shape, tensor_info
from .text import front_end


class Runtime:
    """A model loaded into onnxruntime; build one with :func:`load`.

    Thread-safe: :meth:`run` may be called from several threads at once (each thread has its own bound
    buffers).

    Attributes:
        path: the model file.
        inputs: one :class:`~embed_runtime.tensors.TensorInfo` per graph input, with ``input_dim`` /
            ``input_length`` when known.
        outputs: one :class:`~embed_runtime.tensors.TensorInfo` per graph output.
        metadata: the contract's :class:`~embed_runtime.contract.ModelMetadata` (empty for foreign files).
        text: the :class:`~embed_runtime.text.TextFrontEnd` of a model exported from strings, else None.
        options: the :class:`RuntimeOptions` in effect (``threads=`` folded in).
        execution: what answers :meth:`run`: ``numpy lookup (...)`` (:mod:`embed_runtime.lookup`) or
            ``onnxruntime: <why not the lookup path>``.
        session: the underlying ``onnxruntime.InferenceSession``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Providers = "auto",
        threads: int | None = None,
        options: RuntimeOptions | None = None,
    ):
        opts = options or RuntimeOptions()
        if threads is not None:
            opts = replace(opts, intra_op_threads=threads)
        self.options = opts
        self.path = Path(path)
        self.session = create_session(self.path, providers, opts)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        check_data_files(self.path, props)  # the data files are the ones this .onnx was written with
        graph_inputs = [a.name for a in self.session.get_inputs()]
        try:
            self.metadata = ModelMetadata.from_props(props)
            self.text = front_end(props, graph_inputs)
        except (ValueError, TypeError) as exc:
            raise ModelLoadError(f"{self.path}: cannot read its embed_runtime metadata: {exc}") from None
        dims = self.metadata.input_dims()
        unknown = sorted(set(dims) - set(graph_inputs))
        if unknown:  # the ids of those embeddings would go unchecked: refuse rather than guess
            raise ModelLoadError(
                f"{self.path}: metadata names input(s) {', '.join(map(repr, unknown))} for an embedding, but "
                f"the graph's inputs are {', '.join(map(repr, graph_inputs))}"
            )
        pads = self.metadata.padding_ids()
        self.inputs = [tensor_info(a, dims, pads) for a in self.session.get_inputs()]
        self.outputs = [tensor_info(a) for a in self.session.get_outputs()]
        self._output_names = tuple(o.name for o in self.outputs)
        self._outputs_by_name = {o.name: o for o in self.outputs}
        self._checks = {i.name: FastCheck(i) for i in self.inputs}
        self._fast_check = self._checks[self.inputs[0].name] if len(self.inputs) == 1 else None
        self._binder = Binder(self.session, opts, self.inputs) if opts.io_binding else None
        self._batch_axes = tensors.batch_axes(self.inputs, self.outputs)
        self._lookup, self.execution = lookup_path(
            self.session, self.metadata, self.inputs, self.outputs, opts, self.path.name
        )
        lookup_hot = None if self._lookup is None else self._lookup.run_hot
        self._hot = lookup_hot or (None if self._binder is None else self._binder.run_hot)

    def __repr__(self) -> str:
        return f"Runtime({str(self.path)!r}, providers={self.providers}, execution={self.execution!r})"

    @property
    def providers(self) -> list[str]:
        """Execution providers onnxruntime really uses for this session, best first."""
        return list(self.session.get_providers())

    def _select(self, outputs: Sequence[str] | str | None) -> tuple[str, ...]:
        return self._output_names if outputs is None else tensors.select_outputs(outputs, self._output_names)

    def prepare(self, inputs: Any, *, single_sequence: bool = False) -> dict[str, np.ndarray]:
        """Validate ``inputs`` exactly as :meth:`run` does and return what onnxruntime would be fed:
        ``{input name: C-contiguous array of the graph's dtype}`` (the caller's array when it already is
        one). Raises :class:`InvalidInputError` / :class:`InputTypeError` like :meth:`run`."""
        if self.text is not None:
            inputs = self.text.ids(inputs)
        fast = self._fast_check
        if fast is not None and type(inputs) is np.ndarray and not single_sequence:
            checked = fast(inputs)
            if checked is not None:
                return {fast.name: checked}
        return prepare_all(inputs, self.inputs, single_sequence, self._checks)

    @overload
    def run(
        self, inputs: Any, *, out: np.ndarray | Mapping[str, np.ndarray] | None = None,
        outputs: Sequence[str] | str | None = None, single_sequence: bool = False,
        device_outputs: Literal[False] = False, trust_device_ids: bool = False,
    ) -> dict[str, np.ndarray]: ...  # fmt: skip
    @overload
    def run(
        self, inputs: Any, *, out: None = None, outputs: Sequence[str] | str | None = None,
        single_sequence: bool = False, device_outputs: Literal[True], trust_device_ids: bool = False,
    ) -> DeviceOutputs: ...  # fmt: skip
    def run(
        self,
        inputs: Any,
        *,
        out: np.ndarray | Mapping[str, np.ndarray] | None = None,
        outputs: Sequence[str] | str | None = None,
        single_sequence: bool = False,
        device_outputs: bool = False,
        trust_device_ids: bool = False,
    ) -> dict[str, np.ndarray] | DeviceOutputs:
        """Run the model on validated ids and return ``{output name: array}``, masks included.

        Args:
            inputs: ids as a numpy array of any integer dtype, a list of lists, or a ragged list of
                sequences (padded with 0); a dict ``{input name: ids}`` for models with several inputs.
            out: preallocated output arrays (``{name: array}``, or one array when one output is requested);
                they are written in place and returned. Shapes, dtypes and contiguity are checked.
            outputs: names of the outputs to compute (default: all).
            single_sequence: ``inputs`` is one 1-D sequence; the outputs keep a batch axis of 1.
            device_outputs: return ``OrtValue`` objects left in the provider's memory, DLPack-capable
                where it allows (a :class:`~embed_runtime.device.DeviceOutputs`); ``inputs`` may then be
                ``OrtValue``/DLPack objects too. See :mod:`embed_runtime.device`.
            trust_device_ids: with ``device_outputs``, take ids in device memory unchecked (their values
                cannot be checked there without a copy to the host); host ids are always checked.

        Returned arrays belong to the caller: no later call writes into them while the caller holds them
        or a view of them (arrays passed in ``out`` are written by the calls they are passed to).
        A device output's buffer is owned by its ``OrtValue`` and lives as long as it, or an array made
        from it through DLPack, does; keep the runtime alive meanwhile (the session's allocator owns
        device memory). A DLPack capsule is for one consumer.
        Raises :class:`InvalidInputError` / :class:`InputTypeError` for bad inputs and
        :class:`InferenceError` when onnxruntime fails.
        """
        if device_outputs:
            return run_on_device(self, inputs, self._select(outputs), out, single_sequence, trust_device_ids)
        hot = self._hot  # the lookup path, or the binder's repeated-shape path
        every_output = out is None and outputs is None and not single_sequence
        if hot is not None and every_output and type(inputs) is np.ndarray:
            result = hot(inputs)  # None: the general path takes it
            if result is not None:
                return result
        feeds = self.prepare(inputs, single_sequence=single_sequence)
        names = self._select(outputs)
        if out is not None:
            targets = check_out(out, names, feeds, self.inputs, self._outputs_by_name)
            return self._run_out(feeds, names, targets, outputs is None)
        return self._run_feeds(feeds, names, outputs is None)

    def tokenize(self, texts: Any) -> tuple[Any, Any]:
        """The (ids, mask) the model sees for ``texts`` (a batch, or ``{input name: texts}``); raises
        :class:`InvalidInputError` when the model declares no text input (see :mod:`embed_runtime.text`)."""
        if self.text is None:
            raise InvalidInputError(f"{self.path.name} takes ids, not text: it declares no text input")
        return self.text.tokenize(texts)

    def _run_feeds(self, feeds: dict[str, np.ndarray], names: tuple[str, ...], hot: bool) -> Results:
        """By the lookup path when it serves every output in ``names``; else through the binder's bound
        buffers when it has them for these shapes, else plainly."""
        if self._lookup is not None:
            result = self._lookup.run(feeds, names)
            if result is not None:
                return result
        binder = self._binder
        result = None if binder is None else binder.run(feeds, names, hot)
        if result is None:
            result = self._run_plain(feeds, names)
            if binder is not None:
                binder.learn(feeds, names, result)
        return result

    def _run_plain(self, feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> Results:
        """``InferenceSession.run``, with the number of rows of every output checked against the batch.
        A run on inputs without ids logs nothing: its failure becomes the clear error below."""
        quiet = None if all(a.size for a in feeds.values()) else QUIET_RUN
        try:
            values = self.session.run(list(names), feeds, quiet)
        except Exception as exc:
            if any(a.shape[0] == 0 for a in feeds.values() if a.ndim):  # an empty batch: nothing to compute
                return {n: tensors.empty_output(self._outputs_by_name[n], self.inputs, feeds) for n in names}
            empty = next((n for n, a in feeds.items() if a.size == 0), None)
            if empty is not None:
                raise InvalidInputError(
                    f"input {empty!r} has shape {feeds[empty].shape}: {self.path.name} cannot run on "
                    f"sequences of length 0 (onnxruntime: {first_line(exc)}); send at least one id per row"
                ) from exc
            raise InferenceError(f"onnxruntime failed running {self.path.name}: {exc}") from exc
        result = dict(zip(names, values))
        tensors.check_batch_rows(result, feeds, self._batch_axes, self.path.name)
        return result

    def _run_out(
        self, feeds: dict[str, np.ndarray], names: tuple[str, ...], targets: dict[str, np.ndarray], hot: bool
    ) -> Results:
        """Fill the (checked) ``targets``: small outputs (and empty inputs, which onnxruntime may refuse
        to bind) are copied from a bound or plain run, big ones are bound as outputs so that onnxruntime
        writes straight into them."""
        small = sum(a.nbytes for a in targets.values()) <= self.options.io_binding_max_bytes
        if not (small and self._binder is not None) and all(a.size for a in feeds.values()):
            return run_into(self.session, feeds, names, targets, self.path.name)
        result = self._run_feeds(feeds, names, hot)
        for name, target in targets.items():  # check_out cannot see the axes the graph leaves unstated
            if target.shape != result[name].shape:  # never broadcast into them
                raise InvalidInputError(
                    f"out[{name!r}] has shape {target.shape} but output {name!r} is "
                    f"{result[name].shape} for these inputs"
                )
            np.copyto(target, result[name])
        return {n: targets.get(n, result[n]) for n in names}

    def expected_shape(self, name: str, feeds: Mapping[str, np.ndarray]) -> tuple[int | None, ...]:
        """Shape of output ``name`` for these (prepared) feeds: static dims, and dynamic dims whose
        symbolic name is shared with an input axis; ``None`` where the graph does not say."""
        return expected_shape(self._outputs_by_name[name], self.inputs, feeds)

    def run_batched(
        self,
        inputs: Any,
        batch_size: int = 1024,
        progress: bool = False,
        *,
        outputs: Sequence[str] | str | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run over ``inputs`` in chunks of ``batch_size`` sequences, yielding one result dict per chunk.

        ``inputs`` is an array, a dict of arrays (same batch length), or any iterable of sequences (a
        generator works: it is consumed one chunk at a time, so memory stays bounded by the chunk size).
        Ragged chunks are padded to their own longest sequence. ``progress=True`` shows a tqdm bar (when
        tqdm is installed). Raises :class:`~embed_runtime.errors.ConfigurationError` unless ``batch_size``
        is an integer >= 1.
        """
        names = [i.name for i in self.inputs]
        return run_chunks(lambda chunk: self.run(chunk, outputs=outputs), inputs, batch_size, names, progress)


def load(
    path: str | os.PathLike[str],
    providers: Providers = "auto",
    threads: int | None = None,
    options: RuntimeOptions | None = None,
) -> Runtime:
    """Load an ONNX model for inference.

    Args:
        path: the ``.onnx`` file.
        providers: ``"auto"`` (best available, CPU last) or an explicit list of provider names or
            ``(name, options)`` pairs, honoured exactly; short aliases ``"cpu"``, ``"cuda"``, ``"webgpu"``...
        threads: intra-op threads (shortcut for ``RuntimeOptions.intra_op_threads``).
        options: a :class:`RuntimeOptions`.

    Raises :class:`ModelLoadError`, :class:`ProviderError` and, for invalid ``threads`` or options,
    :class:`~embed_runtime.errors.ConfigurationError`.
    """
    try:
        return Runtime(path, providers=providers, threads=threads, options=options)
    except EmbedRuntimeError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc
