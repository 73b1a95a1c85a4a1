"""Batch inference on Ray Data (the ``[ray]`` extra): :class:`Predictor` and ``embed-runtime batch``.

>>> import ray
>>> from embed_runtime.scale import Predictor
>>> ds = ray.data.read_parquet("ids/")                                           # doctest: +SKIP
>>> ds = ds.map_batches(Predictor, fn_constructor_args=("model.onnx",),
...                     fn_constructor_kwargs={"key": "user"}, concurrency=4,
...                     batch_size=8192, batch_format="pyarrow")                  # doctest: +SKIP

Each actor loads the model once (:func:`embed_runtime.load`) and runs every batch through
:meth:`Runtime.run <embed_runtime.Runtime.run>`: the runtime's id rules, ragged padding and errors hold
unchanged. A batch is a dict of numpy arrays, a pandas DataFrame or a pyarrow Table (Ray's
``batch_format``) and comes back in its format: the kept columns, one column per model output holding
each row's slice of it (the graph's shape: a ``(batch, seq)`` mask gives a list per row, ``(batch, 1)`` a
list of one), and with ``on_error="column"`` an ``error`` column. Rows keep their order within a batch;
across batches Ray keeps it when ``DataContext.execution_options.preserve_order`` is set (the command
sets it).

Input columns, one per model input, named after it unless ``columns=`` maps it: a list of ids per row,
fixed-length or ragged (Arrow ``list``/``fixed_size_list``, Ray's numpy object arrays, a 2-D integer
array), one integer per row for an input of one id per row, or one string per row for a model exported
from strings (the runtime's text front end makes the ids). A list column whose rows have one length
reaches the runtime as one ``(batch, seq)`` array without a copy; ragged rows are padded by the runtime
(to the batch's longest row, only where its rules allow), so a row's padded length depends on its batch.

**Errors.** A bad row (an id out of range, a float, a null row...) fails its batch, and so the job, with
the runtime's error, prefixed with the row within the batch and, with ``key=``, that row's key::

    row 7 of a batch of 8192 rows (user=1234): input 'token_ids': id 99 at position [7, 3] is outside
    the allowed range [0, 50) (input_dim of the embedding table)

Ray Data does not tell a batch where it sits in the dataset, so ``key=`` (``--key``) is how a message
names the row of the dataset. To **route bad rows aside** instead, use ``on_error="column"``
(``--on-error column``): a bad row's message goes to the ``error`` column (null for good rows; it is the
runtime's message for the row alone, so positions read ``[0, j]``, ``j`` within the row), its outputs are
filled (NaN for floats, 0 or False otherwise) and the job goes on; the good rows still run through
:meth:`~embed_runtime.Runtime.run`. Then ``ds.filter(expr="is_null(error)")`` keeps them and
``ds.filter(expr="is_not_null(error)")`` is the dead-letter set. The happy path costs nothing extra: rows
are only checked one by one in a batch that failed.

**``embed-runtime batch``** (:func:`main`): Parquet in, Parquet out (through
:class:`~embed_runtime.scale.sink.OrderedParquetSink`, rows in input order), on a local Ray started with
this machine's cores or on a cluster given by ``--ray-address`` / ``$RAY_ADDRESS``
(``docs/scale-out.md``; a local Ray reads Parquet without Ray Data's footer actors, see
:func:`_local_read`). Actors leave one CPU of the cluster to Ray Data's read and write tasks. The
model and the options are checked on the driver before Ray starts, and the runtime's error inside Ray's
wrappers comes back as one line.

Modules: :mod:`~embed_runtime.scale.predictor` (:class:`Predictor`), :mod:`~embed_runtime.scale.columns`
(columns to ids, outputs to columns), :mod:`~embed_runtime.scale.sink` (the ordered Parquet writer).
Importing :mod:`embed_runtime` never imports this package.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset
import ray
import ray.data

from .. import errors
from ..cli_common import add_session_arguments
from ..errors import ConfigurationError, EmbedRuntimeError, InvalidInputError
from .predictor import Predictor
from .sink import OrderedParquetSink

__all__ = ["Predictor", "add_arguments", "main"]

_ERROR_LINE = re.compile(r"^embed_runtime\.errors\.(\w+): (.+)$", re.MULTILINE)


def _local_read(context: ray.data.DataContext, actors: int) -> dict[str, Any]:
    """How a Ray started by the command reads Parquet: Ray Data's first reader (footers read on the
    driver, ``use_datasource_v2 = False``) in ``max(2, actors)`` blocks. Ray 2.60's default reader lists
    the files in a task that starts actors to read the footers (32 by default): a process start and Ray
    Data's imports before the first row, about 0.6 s of a 100,000-row run on 2 cores (and 2 s with 32
    actors), worth it for thousands of files on object storage, not on one machine. Returns the keyword
    arguments of ``read_parquet`` (without a block count, that reader splits one file into 200 blocks)."""
    context.use_datasource_v2 = False
    return {"override_num_blocks": max(2, actors)}


def _column_pair(text: str) -> tuple[str, str]:
    name, sep, column = text.partition("=")
    if not sep or not name or not column:
        raise argparse.ArgumentTypeError(f"{text!r} is not INPUT=COLUMN, e.g. token_ids=ids")
    return name, column


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``embed-runtime batch``."""
    add = parser.add_argument
    add("model", help="the .onnx model, at this path on every node (relative: to the driver's folder)")
    add("--input", required=True, help="a Parquet file or folder, or a URI Ray reads (s3://, gs://...)")
    add("--output", required=True, help="a new or empty folder for the Parquet output, or a URI")
    add("--ray-address", default=None, help="a Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    add("--concurrency", type=int, default=None, help="actors (default: the CPUs left after one)")
    add("--batch-size", type=int, default=8192, help="rows per batch (default 8192)")
    add("--actor-cpus", type=float, default=None, help="CPUs each actor reserves (default: --threads or 1)")
    add_session_arguments(parser, threads_help="intra-op threads per actor (default: its CPUs, at least 1)")
    add("--column", action="append", type=_column_pair, default=[], metavar="INPUT=COLUMN",
        help="read an input from a column of another name (repeatable)")  # fmt: skip
    add("--keep", action="append", default=[], metavar="COLUMN",
        help="copy a column to the output (repeatable)")  # fmt: skip
    add("--key", default=None, help="a column naming each row in error messages (kept in the output)")
    add("--on-error", choices=("raise", "column"), default="raise",
        help="fail on a bad row (default), or write its message to an 'error' column and go on")  # fmt: skip


def _check_paths(source: str, target: str) -> None:
    if "://" not in source and not Path(source).exists():
        raise InvalidInputError(f"--input {source}: no such file or folder")
    out = Path(target)
    if "://" not in target and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(
            f"--output {target} exists and is not an empty folder; give a new or empty one"
        )


def _actors(cpus: float, concurrency: int | None) -> int:
    """Actors of ``cpus`` each: by default as many as fit in the cluster's CPUs but one, and never so many
    that no CPU is left for Ray Data's read and write tasks (one CPU each: they would wait for ever)."""
    if cpus <= 0:
        raise ConfigurationError(f"--actor-cpus must be above 0, got {cpus:g}")
    total = ray.cluster_resources().get("CPU", 0.0)
    actors = concurrency or max(1, int((total - 1) // cpus))
    if actors * cpus > total - 1:
        raise ConfigurationError(
            f"{actors} actor(s) x {cpus:g} CPUs leave no CPU for reading and writing in a Ray cluster of "
            f"{total:g} CPUs; lower --concurrency or --actor-cpus (a fraction such as 0.5 is allowed)"
        )
    return actors


def _runtime_error(exc: BaseException) -> EmbedRuntimeError | None:
    """The runtime's error behind Ray's wrappers, if any. Ray Data wraps a UDF's exception in a
    ``UserCodeException`` whose cause does not survive the trip from the actor (only its traceback text
    does), so the error is rebuilt from the first ``embed_runtime.errors.<Name>: <message>`` line there;
    with ``DataContext.raise_original_map_exception`` it is the ``RayTaskError``'s ``cause`` instead."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, EmbedRuntimeError) and not isinstance(cause, ray.exceptions.RayError):
        return cause
    found = _ERROR_LINE.search(str(exc))
    kind = getattr(errors, found.group(1), None) if found else None
    if found and isinstance(kind, type) and issubclass(kind, EmbedRuntimeError):
        return kind(found.group(2))
    return None


def main(args: argparse.Namespace) -> int:
    """Run ``args.model`` over the Parquet at ``args.input``; write Parquet to ``args.output``."""
    for option, value in (("--concurrency", args.concurrency), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigurationError(f"{option} must be an integer >= 1, got {value}")
    _check_paths(args.input, args.output)
    options: dict[str, Any] = {
        "providers": args.providers, "threads": args.threads, "columns": dict(args.column),
        "keep": args.keep, "key": args.key, "on_error": args.on_error,
    }  # fmt: skip
    Predictor(args.model, **{**options, "providers": "cpu", "threads": 1})  # fails here, before Ray starts
    started = not ray.is_initialized()
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if started and address:
        ray.init(address=address)
    elif started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.use_datasource_v2
    try:
        cpus = args.actor_cpus if args.actor_cpus is not None else args.threads or 1
        actors = _actors(cpus, args.concurrency)
        context.execution_options.preserve_order = True
        start = time.perf_counter()
        read = _local_read(context, actors) if started and not address else {}
        ds = ray.data.read_parquet(args.input, **read).map_batches(
            Predictor,
            fn_constructor_args=(args.model,),
            fn_constructor_kwargs=options,
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=args.batch_size,
            batch_format="pyarrow",
            num_cpus=cpus,
        )
        try:
            ds.write_datasink(OrderedParquetSink(args.output))
        except Exception as exc:
            error = _runtime_error(exc)
            if error is None:
                raise
            raise error from None
        seconds = time.perf_counter() - start
    finally:
        context.execution_options.preserve_order, context.use_datasource_v2 = saved
        if started:
            ray.shutdown()
    rows = pyarrow.dataset.dataset(args.output, format="parquet").count_rows()
    print(
        f"wrote {rows:,} rows to {args.output} in {seconds:.2f} s ({rows / seconds:,.0f} rows/s, "
        f"{actors} actor{'s' if actors > 1 else ''})"
    )
    return 0
