"""Regenerate every reference model's committed artifacts: ``python -m models.build [name ...]``.

Runs each model's ``python -m models.<name>.train``: trains its committed flavour, exports
``models/<name>/model.onnx`` with :func:`exporters.export_keras` and writes ``models/<name>/golden.npz``.
Needs the ``export`` extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from models import NAMES, info

if TYPE_CHECKING:
    from exporters import ExportReport


def build(names: list[str] | None = None) -> list[tuple[str, ExportReport]]:
    """Regenerate the artifacts of ``names`` (all when ``None``); returns ``(name, ExportReport)`` pairs."""
    done = []
    for name in names or list(NAMES):
        start = time.perf_counter()
        report = info(name).train_module().RECIPE.main()
        print(f"  {name}: {time.perf_counter() - start:.1f} s in all\n", flush=True)
        done.append((name, report))
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m models.build [name ...]``."""
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="name", help=f"models to rebuild: {', '.join(NAMES)} (default: all)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    build(args.names or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
