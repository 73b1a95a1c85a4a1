"""``embed-export``: export a saved Keras model to a verified ONNX artifact from the shell.

The parser and the one-line error path (``embed-export: error: ...``, exit status 1) are those of the
runtime's commands, from :mod:`embed_runtime.cli_common`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from embed_runtime.cli_common import make_parser, run_command

EPILOG = """examples:
  embed-export model.keras -o model.onnx
  embed-export saved_model_dir/ -o model.onnx --opset 13
  embed-export model.h5 -o model.onnx --atol 1e-4
  embed-export big.keras -o big.onnx --external-data-threshold 256MiB
  embed-export model.keras -o model.int8.onnx --table-dtype int8
  embed-export model.keras -o model.onnx --format ort    # also model.ort + model.required_operators.config

The graph is checked against the Keras model on seeded ids before it is written; on any failure
nothing is written and the exit status is 1."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``embed-export``."""
    parser = make_parser(
        "embed-export",
        "Export a Keras model with Embedding layers to a minimal ONNX graph (Gather + mask outputs).",
        EPILOG,
    )
    parser.add_argument("model", help="a .keras or .h5 file, or a SavedModel folder")
    parser.add_argument("-o", "--output", required=True, help="path of the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the lowest that works)")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check (for huge models)")
    parser.add_argument("--atol", type=float, default=1e-5, help="parity tolerance for float outputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the verification ids")
    parser.add_argument(
        "--external-data-threshold",
        default=None,
        metavar="SIZE",
        help="tables larger than this (e.g. 64MiB, 1G, 4096, off) are written to <output>.data, which "
        "onnxruntime memory-maps (default: $EMBED_EXPORT_EXTERNAL_DATA_THRESHOLD or 64MiB)",
    )
    parser.add_argument(
        "--table-dtype",
        choices=("float32", "float16", "int8"),
        default="float32",
        help="how the tables are stored: float32 (default), float16 (half the bytes) or int8 (per-row "
        "symmetric, a quarter); outputs stay float32 and the check reports the error against Keras",
    )
    parser.add_argument(
        "--format",
        choices=("onnx", "ort"),
        default="onnx",
        help="ort: also convert the .onnx with onnxruntime's converter into <output stem>.ort (the mobile "
        "format) and write <output stem>.required_operators.config for a reduced onnxruntime build",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``embed-export``; returns the exit status (0 ok, 1 export failed, 2 usage error)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        from .errors import ExportError
        from .export import export_keras
    except ImportError as exc:
        print(
            f"embed-export: {exc}. Install the export extra: pip install 'embed-runtime[export]'",
            file=sys.stderr,
        )
        return 2

    def export(args: argparse.Namespace) -> int:
        report = export_keras(
            args.model,
            args.output,
            opset=args.opset,
            verify=not args.no_verify,
            atol=args.atol,
            seed=args.seed,
            external_data_threshold=args.external_data_threshold,
            table_dtype=args.table_dtype,
        )
        print(report)
        if args.format == "ort":
            from .mobile import to_ort

            ort_path, config = to_ort(Path(args.output))
            print(
                f"converted to {ort_path} ({ort_path.stat().st_size:,} bytes); reduced build operators in {config}"
            )
        return 0

    return run_command("embed-export", export, args, expected=(ExportError,))


if __name__ == "__main__":
    sys.exit(main())
