"""Strings in: ``embed_runtime``'s text path against Keras's on 10,000 real sentences, in one run.

``python -m benchmarks.text_speed [--write]`` trains the reference text model (``models/text``: default
``TextVectorization`` -> ``Embedding(mask_zero=True)`` -> classifier, Keras 3), exports it, and times, on
10,000 docstring lines of the Python standard library (a seeded sample; text nobody here wrote):

* Keras: ``model(batch)`` (``TextVectorization`` + model, eager) batch after batch, and ``model.predict``
  over all of them;
* the runtime: ``rt.run(texts)`` batch after batch (tokenization by the declared spec + onnxruntime), and
  ``rt.tokenize`` alone next to the ``TextVectorization`` layer alone.

Each contender runs once to warm up, then :data:`REPEATS` times, interleaved; the table gives medians over
the 10,000 sentences and the ratio of the faster Keras path to the runtime. Before timing, the runtime's ids
must equal Keras's for every sentence and its outputs be within 1e-5. ``--write`` puts the section into
``docs/benchmarks.md`` (replacing that section only; the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `models` is a folder of the repository
    sys.path.insert(0, str(ROOT))

from benchmarks._docs import heading_span  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Text in: strings through the runtime vs Keras"
SENTENCES = 10_000
BATCHES = (32, 256, SENTENCES)
REPEATS = 5
MODULES = (
    "os", "pathlib", "shutil", "glob", "tempfile", "zipfile", "tarfile", "re", "string", "textwrap",
    "difflib", "unicodedata", "codecs", "html", "csv", "json", "collections", "functools", "itertools",
    "argparse", "typing", "logging", "email", "http.client", "urllib.request", "asyncio", "subprocess",
    "socket", "ssl", "threading", "multiprocessing", "datetime", "decimal", "fractions", "statistics",
    "random", "math", "inspect", "ast", "dis", "pickle", "sqlite3", "xml.etree.ElementTree", "unittest",
    "doctest", "pdb", "pydoc", "configparser", "enum", "dataclasses", "contextlib", "abc", "io", "struct",
    "heapq", "bisect", "queue", "selectors", "mailbox", "ftplib", "smtplib", "imaplib", "calendar",
    "locale", "gettext", "operator", "copy", "pprint", "weakref", "types", "traceback", "warnings", "zlib",
    "gzip", "bz2", "lzma", "hashlib", "secrets", "uuid", "ipaddress", "base64", "platform", "sysconfig",
    "importlib", "pkgutil", "tokenize", "shlex", "cmd", "fnmatch", "filecmp", "stat", "time", "timeit",
)  # fmt: skip
"""Standard-library modules whose docstring lines make the sentences (about 12,500 distinct lines)."""


def sentences(count: int = SENTENCES) -> list[str]:
    """``count`` distinct docstring lines of :data:`MODULES`, a sample seeded with 0."""
    from models.text.train import docstring_lines

    lines = docstring_lines(MODULES)
    pick = np.random.default_rng(0).choice(len(lines), size=count, replace=False)
    return [lines[i] for i in sorted(pick)]


def _batched(fn: Callable[[list[str]], object], texts: list[str], batch: int) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, len(texts), batch):
            fn(texts[start : start + batch])

    return run


def _timings(contenders: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Seconds of each contender: one warm-up each, then :data:`REPEATS` rounds, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(REPEATS):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def check_parity(model: Any, rt: Any, texts: list[str]) -> float:
    """Max |runtime - Keras| of the probabilities; raises unless the ids are Keras's, id for id."""
    from models.text.train import keras_run

    want = keras_run(model, texts)
    ids, _ = rt.tokenize(texts)
    if not np.array_equal(ids, want["input.text"]):
        raise SystemExit("the runtime's ids differ from Keras's: not timing")
    got = rt.run(texts)
    if not np.array_equal(got["mask"], want["output.mask"]):
        raise SystemExit("the runtime's masks differ from Keras's: not timing")
    return float(np.max(np.abs(got["probability"] - want["output.probability"])))


def measure() -> tuple[dict[str, list[float]], float, dict[str, str]]:
    """Train, export, check parity and time: (seconds per contender, max |diff|, versions)."""
    import keras
    import onnxruntime
    import tensorflow as tf

    import embed_runtime
    from exporters import export_keras
    from models.text.train import build_and_train

    texts = sentences()
    model = build_and_train("keras3")
    path = Path(tempfile.mkdtemp(prefix="text-speed-")) / "model.onnx"
    export_keras(model, path)
    rt = embed_runtime.load(path, providers="cpu")
    diff = check_parity(model, rt, texts)
    vectorize = model.get_layer("vectorize")

    def keras_call(batch: list[str]) -> object:
        return model(tf.constant([[t] for t in batch]), training=False)

    def keras_vectorize(batch: list[str]) -> object:
        return vectorize(tf.constant([[t] for t in batch]))

    contenders: dict[str, Callable[[], object]] = {
        "Keras model.predict (batch_size 256)": lambda: model.predict(
            tf.constant([[t] for t in texts]), batch_size=256, verbose=0
        ),
    }
    for batch in BATCHES:
        contenders[f"Keras model(x), {batch} a call"] = _batched(keras_call, texts, batch)
        contenders[f"embed_runtime rt.run(texts), {batch} a call"] = _batched(rt.run, texts, batch)
    contenders["Keras TextVectorization layer only, 256 a call"] = _batched(keras_vectorize, texts, 256)
    contenders["embed_runtime rt.tokenize only, 256 a call"] = _batched(rt.tokenize, texts, 256)
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnxruntime": onnxruntime.__version__,
        "embed-runtime": embed_runtime.__version__,
    }
    return _timings(contenders), diff, versions


def section(times: dict[str, list[float]], diff: float, versions: dict[str, str]) -> str:
    """The Markdown section: a row per contender, and the runtime's ratio per batch size."""
    median = {name: statistics.median(t) for name, t in times.items()}
    lines = [
        HEADING,
        "",
        f"Measured by `python -m benchmarks.text_speed --write` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f" ({os.cpu_count()} cores; {', '.join(f'{k} {v}' for k, v in versions.items())}). The reference text "
        f"model (`models/text`) on {SENTENCES:,} docstring lines of the standard library; before timing, "
        f"the runtime's ids equal Keras's for every line and its outputs are within {diff:.1e} of Keras's. "
        f"Medians of {REPEATS} passes over all {SENTENCES:,} lines, contenders interleaved.",
        "",
        "| contender | seconds for 10,000 lines | lines/s |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {m:.3f} | {SENTENCES / m:,.0f} |" for name, m in median.items()]
    lines += [
        "",
        "Fastest Keras: the faster of `model(x)` at that batch size and `model.predict` over all lines.",
        "",
        "| batch | fastest Keras (s) | embed_runtime (s) | runtime speed-up |",
        "|---|---|---|---|",
    ]
    for batch in BATCHES:
        keras_s = min(
            median[f"Keras model(x), {batch} a call"], median["Keras model.predict (batch_size 256)"]
        )
        ours = median[f"embed_runtime rt.run(texts), {batch} a call"]
        lines.append(f"| {batch:,} | {keras_s:.3f} | {ours:.3f} | {keras_s / ours:.1f}x |")
    tokenize = (
        median["Keras TextVectorization layer only, 256 a call"]
        / median["embed_runtime rt.tokenize only, 256 a call"]
    )
    lines += [
        "",
        f"Tokenization alone (256 a call): the runtime is {tokenize:.1f}x as fast as the layer.",
        "",
    ]
    return "\n".join(lines)


def write(text: str, docs: Path = DOCS) -> None:
    """Put ``text`` into ``docs`` in place of its :data:`HEADING` section (up to the next ``## ``), or at
    the end; everything else is kept."""
    old = docs.read_text(encoding="utf-8")
    span = heading_span(old, HEADING)
    new = old.rstrip("\n") + "\n\n" + text if span is None else old[: span[0]] + text + old[span[1] :]
    docs.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.text_speed", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--write", action="store_true", help=f"write the section into {DOCS.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)
    text = section(*measure())
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
