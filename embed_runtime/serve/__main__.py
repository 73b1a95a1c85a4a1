"""``python -m embed_runtime.serve [NAME=]PATH ...``: the same server as ``embed-runtime serve``."""

from __future__ import annotations

import argparse
import sys

from embed_runtime.serve import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m embed_runtime.serve", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
