"""The ``embed-runtime`` command: ``info`` and ``run`` here, ``bench`` and ``serve`` in their modules.

``bench`` and ``serve`` live in :mod:`embed_runtime.bench` and :mod:`embed_runtime.serve`; each exposes
``add_arguments(parser)`` and ``main(args) -> int`` and is imported only when its subcommand is used.
The options they share (``--providers``, ``--threads``) and the one-line error path (``embed-runtime
<command>: error: ...``, exit status 1) come from :mod:`embed_runtime.cli_common`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from . import InvalidInputError, ModelLoadError, Runtime, __version__, load
from .artifact import verify_sha256
from .cli_common import add_session_arguments, make_parser, run_command

EPILOG = """examples:
  embed-runtime info model.onnx
  embed-runtime run model.onnx --ids "[[4, 20, 0]]"
  embed-runtime run model.onnx --ids '{"user_id": [[1, 2]], "item_id": [[3, 4]]}'
  embed-runtime run model.onnx --input ids.npy --output out.npz
  embed-runtime run text_model.onnx --text "the cat sat" --text "a dog"
  embed-runtime run model.onnx --ids "[[4, 20, 0]]" --providers cpu --threads 1
"""

LAZY_COMMANDS = {
    "bench": ("embed_runtime.bench", "bench", "measure latency and throughput of a model"),
    "serve": ("embed_runtime.serve", "serve", "serve a model over HTTP"),
    "batch": ("embed_runtime.scale", "ray", "run a model over Parquet files with Ray Data"),
}


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the exported .onnx file")
    add_session_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``embed-runtime``."""
    parser = make_parser(
        "embed-runtime",
        "Run exported Keras Embedding models (ONNX) under onnxruntime, without TensorFlow.",
        EPILOG,
    )
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser(
        "info", help="show a model's inputs, outputs, embeddings, versions and providers in use"
    )
    _add_model_arguments(info)

    run = sub.add_parser(
        "run",
        help="run a model on ids and print or save the outputs",
        description="Run a model on ids given inline (--ids) or in a file (--input).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(run)
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ids", help='JSON ids: "[[4, 20, 0]]" (ragged lists are padded with 0) or {"input name": ids, ...}'
    )
    source.add_argument(
        "--text", action="append", help="a text for a model exported from strings (repeat for a batch)"
    )
    source.add_argument("--input", type=Path, help=".npy with the ids, or .npz with one array per input name")
    run.add_argument("--output", type=Path, help="write all outputs to this .npz instead of printing them")
    run.add_argument(
        "--single-sequence", action="store_true", help="the ids are one 1-D sequence (batch axis of 1 added)"
    )

    for name, (_module, extra, text) in LAZY_COMMANDS.items():
        # listed for --help; main() hands their arguments to the module's own parser
        sub.add_parser(name, help=f"{text} (needs the [{extra}] extra)", add_help=False)
    return parser


def _load(args: argparse.Namespace) -> Runtime:
    return load(args.model, providers=args.providers, threads=args.threads)


def _shape(shape: Sequence[int | None], names: Sequence[str | None] = ()) -> str:
    dims = [str(d) if d is not None else (n or "?") for d, n in zip(shape, list(names) + [None] * len(shape))]
    return "(" + ", ".join(dims) + ")"


def cmd_info(args: argparse.Namespace) -> int:
    """Print what a model takes and gives, its embedding facts and versions, and where it runs."""
    rt = _load(args)
    print(f"model: {rt.path}")
    print(f"providers in use: {', '.join(rt.providers)}")
    print(f"execution: {rt.execution}")
    print("inputs:")
    for s in rt.inputs:
        extra = f", ids in [0, {s.input_dim})" if s.input_dim is not None else ""
        print(f"  {s.name}: {s.dtype}{_shape(s.shape, s.dim_names)}{extra}")
    print("outputs:")
    for s in rt.outputs:
        print(f"  {s.name}: {s.dtype}{_shape(s.shape, s.dim_names)}")
    meta = rt.metadata
    if not meta.is_embed_runtime_artifact:
        print("embeddings: none recorded (not an embed-runtime export; only dtype/shape checks apply)")
    for e in meta.embeddings:
        mask = f", mask_zero (padding id {e.padding_id}) -> {e.mask_output}" if e.mask_zero else ""
        print(
            f"embedding {e.layer}: {e.input_dim} x {e.output_dim} {e.dtype}, ids from {', '.join(e.inputs)}{mask}"
        )
    print("versions:")
    print(f"  embed_runtime {__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}")
    for key, value in sorted(meta.versions.items()):
        print(f"  {key.removeprefix('embed_runtime.')}: {value}")
    return _info_data_files(rt)


def _info_data_files(rt: Runtime) -> int:
    """Print each recorded external data file with its full sha256 check; raise if one does not match."""
    checked = verify_sha256(rt.path, rt.metadata.raw)
    if checked:
        print("external data (full sha256 check):")
    for record, found in checked:
        verdict = "OK" if found == record.sha256 else f"MISMATCH: recorded {record.sha256}, found {found}"
        print(f"  {record.location}: {record.bytes:,} bytes, sha256 {verdict}")
    bad = [record.location for record, found in checked if found != record.sha256]
    if bad:
        raise ModelLoadError(
            f"{rt.path}: data file {bad[0]} does not have the sha256 recorded in the model: it was changed "
            "after the export; export again, or put back the files that were exported together"
        )
    return 0


def _read_inputs(args: argparse.Namespace) -> Any:
    if (
        args.text is not None
    ):  # the bytes given (Python decodes argv with surrogateescape): UTF-8 checked there
        return [text.encode("utf-8", "surrogateescape") for text in args.text]
    if args.ids is not None:
        try:
            return json.loads(args.ids)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--ids is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInputError(
                "--ids is JSON nested too deep; ids are a (batch, seq) list of lists"
            ) from None
    path: Path = args.input
    if not path.is_file():
        raise InvalidInputError(f"--input file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {path} as .npy/.npz: {exc}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        return {name: loaded[name] for name in loaded.files}


def cmd_run(args: argparse.Namespace) -> int:
    """Run the model and save the outputs to --output, or print a summary with the values."""
    if args.output is not None and not Path(args.output).resolve().parent.is_dir():
        raise InvalidInputError(f"--output {args.output}: folder {Path(args.output).parent} does not exist")
    rt = _load(args)
    inputs = _read_inputs(args)
    if args.input is not None and isinstance(inputs, dict) and len(rt.inputs) == 1 and len(inputs) == 1:
        # one array in an .npz (np.savez names it arr_0) is the model's one input; --ids names are checked
        inputs = next(iter(inputs.values())) if rt.inputs[0].name not in inputs else inputs
    result = rt.run(inputs, single_sequence=args.single_sequence)
    if args.output is not None:
        # typed as Any: numpy's stub has a keyword allow_pickle: bool that mypy matches **result against
        arrays: dict[str, Any] = result
        try:
            np.savez(args.output, **arrays)
        except OSError as exc:
            raise InvalidInputError(f"cannot write --output {args.output}: {exc}") from None
        print(f"wrote {', '.join(result)} to {args.output}")
        return 0
    with np.printoptions(precision=4, threshold=200, edgeitems=3, linewidth=110):
        for name, value in result.items():
            print(f"{name}: {value.dtype}{_shape(value.shape)}")
            print(value)
    return 0


def _run_lazy(name: str, rest: list[str]) -> int:
    module_name, extra, text = LAZY_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(
            f"embed-runtime {name}: not available ({exc}).\nInstall the extra: pip install 'embed-runtime[{extra}]'",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"embed-runtime {name}", description=text)
    module.add_arguments(parser)
    return run_command(f"embed-runtime {name}", module.main, parser.parse_args(rest))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``embed-runtime``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LAZY_COMMANDS:
        return _run_lazy(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"embed-runtime {__version__} (onnxruntime {onnxruntime.__version__}, numpy {np.__version__})")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return run_command(f"embed-runtime {args.command}", cmd_info if args.command == "info" else cmd_run, args)


if __name__ == "__main__":
    sys.exit(main())
