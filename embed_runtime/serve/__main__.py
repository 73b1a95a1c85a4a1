"""``python -m embed_runtime.serve [NAME=]PATH ...``: the same server as ``embed-runtime serve``."""

from __future__ import annotations

import sys

from embed_runtime.cli_common import make_parser, run_command
from embed_runtime.serve import add_arguments, main

if __name__ == "__main__":
    parser = make_parser("python -m embed_runtime.serve", __doc__ or "")
    add_arguments(parser)
    sys.exit(run_command("embed-runtime serve", main, parser.parse_args()))
