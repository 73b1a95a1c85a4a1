"""Command-line plumbing shared by ``embed-runtime run/info/bench/serve`` and ``embed-export``.

* :func:`make_parser`: an argument parser whose description and examples keep their line breaks;
* :func:`add_session_arguments`: ``--providers`` (parsed by :func:`parse_providers`: ``auto`` or a comma
  list) and ``--threads`` (parsed by :func:`thread_count`), the same options and meaning everywhere;
* :func:`run_command`: run a subcommand and turn an expected error into one line
  ``<prog>: error: <message>`` on stderr and exit status 1 (usage errors stay argparse's, status 2).

``exporters`` may import this module; nothing here imports ``exporters``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import EmbedRuntimeError

PROVIDERS_HELP = '"auto" (default: best available, CPU last) or a comma-separated list such as "cuda,cpu"'


def make_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` that prints ``description`` and ``epilog`` (the examples) as written."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_providers(text: str) -> str | list[str]:
    """``"auto"`` (any case) stays ``"auto"``; ``"cuda, cpu"`` -> ``["cuda", "cpu"]``.

    Blanks are dropped and a name given twice (in any case) is kept once, at its first place, so
    ``cpu,cpu`` means ``cpu``. Whether each name exists is :func:`embed_runtime.load`'s to say.
    """
    if text.strip().lower() == "auto":
        return "auto"
    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if name and name.lower() not in {n.lower() for n in names}:
            names.append(name)
    return names


def thread_count(text: str) -> int:
    """An argparse ``type`` for ``--threads``: an integer >= 0 (0 is onnxruntime's own default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below zero; give a thread count >= 0")
    return value


def add_session_arguments(
    parser: argparse.ArgumentParser, threads_help: str = "intra-op threads (default: onnxruntime's)"
) -> None:
    """Add ``--providers`` (``args.providers``: ``"auto"`` or a list of names) and ``--threads``."""
    parser.add_argument("--providers", type=parse_providers, default="auto", help=PROVIDERS_HELP)
    parser.add_argument("--threads", type=thread_count, default=None, help=threads_help)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a multi-line message from onnxruntime joined with spaces)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def run_command(
    prog: str,
    command: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    expected: tuple[type[Exception], ...] = (EmbedRuntimeError,),
) -> int:
    """``command(args)``'s exit status, or 1 after printing ``<prog>: error: <message>`` to stderr when
    it raises one of the ``expected`` errors (anything else is a bug and keeps its traceback)."""
    try:
        return command(args)
    except expected as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
