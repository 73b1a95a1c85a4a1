"""embed_runtime against LiteRT (TFLite) on the same Keras 3 models (issue 13, item 5).

The trained seed and classifier and a 1M x 64 table (N(0, 1) rows), each in float32, float16 and int8:
our artifact (``export_keras(table_dtype=...)``, run by ``embed_runtime.load(path, threads=1)``) and
TensorFlow's TFLite conversion (float32, float16, dynamic-range int8; run by ``ai_edge_litert``'s
interpreter, ``num_threads=1``). One run measures bytes on disk, cold start (load and first inference in
fresh subprocesses, median), 1x16 and 32x10 latency (contenders interleaved by
:func:`embed_runtime.timing.measure`) and the max abs error against Keras, then writes the "Against
LiteRT" section of ``docs/edge.md`` (between its markers only) and ``docs/edge-litert.png``.

    python -m benchmarks.edge_compare       # from the repository root (TensorFlow, ai-edge-litert); ~2-4 min
    python -m benchmarks.edge_compare --json out.json --no-doc --models seed classifier
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "edge.md"
PLOT = ROOT / "docs" / "edge-litert.png"
BEGIN, END = "<!-- against-litert: benchmarks/edge_compare.py -->", "<!-- /against-litert -->"
DTYPES = ("float32", "float16", "int8")
LITERT, OURS = "LiteRT", "embed_runtime"
BIG_ROWS, BIG_DIM = 1_000_000, 64
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "KERAS_BACKEND": "tensorflow"}


@dataclass(frozen=True)
class Case:
    """One model: name, vocabulary, the (batch, length) shapes timed, cold-start samples, timing budget."""

    name: str
    vocab: int
    shapes: tuple[tuple[int, int], tuple[int, int]]
    cold_samples: int
    budget: float


CASES = (
    Case("seed", 1000, ((1, 10), (32, 10)), 5, 0.4),  # the seed's length is fixed at 10
    Case("classifier", 50, ((1, 16), (32, 10)), 5, 0.4),
    Case("1M x 64", BIG_ROWS, ((1, 16), (32, 10)), 3, 0.25),
)


@dataclass(frozen=True)
class Row:
    """One engine on one artifact: bytes on disk, seconds (cold start, import, per-call medians of the
    two shapes), the max abs output error against Keras and, for ours, onnxruntime's own 1x16 floor."""

    model: str
    dtype: str
    engine: str
    bytes: int
    cold: float
    imports: float
    small: float
    batch: float
    error: float
    floor: float = float("nan")


def ids_for(vocab: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """int64 ids in ``[1, vocab)`` with the last quarter of every other row padded with 0."""
    ids = np.random.default_rng(seed).integers(1, vocab, size=shape, dtype=np.int64)
    ids[::2, shape[1] - shape[1] // 4 :] = 0
    return ids


def litert_call(path: Path, ids: np.ndarray) -> Callable[[], np.ndarray]:
    """A LiteRT interpreter (1 thread) sized for ``ids``; the call sets the input, invokes, reads the output."""
    from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped]

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(ids.shape))
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]["index"]

    def call() -> np.ndarray:
        interpreter.set_tensor(index, ids)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    return call


def ours_call(path: Path, ids: np.ndarray) -> Callable[[], np.ndarray]:
    """``embed_runtime.load(path, threads=1)``; the call is ``rt.run(ids)``, its first float output."""
    import embed_runtime

    runtime = embed_runtime.load(path, providers="cpu", threads=1)
    name = next(o.name for o in runtime.outputs if o.dtype != np.bool_)
    return lambda: runtime.run(ids)[name]


def floor_call(path: Path, ids: np.ndarray) -> Callable[[], object]:
    """onnxruntime alone: ``run_with_iobinding`` on ``ids`` bound once (no validation, no copies): the
    least a call through onnxruntime's Python API costs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_cpu_input(session.get_inputs()[0].name, ids)
    for output in session.get_outputs():
        binding.bind_output(output.name)
    return lambda: session.run_with_iobinding(binding)


ENGINE_CALLS = {LITERT: litert_call, OURS: ours_call}


def child(engine: str, path: Path, vocab: int, shape: tuple[int, int]) -> dict[str, float]:
    """In a fresh process: seconds to import the engine, then to load ``path`` and run it once."""
    start = time.perf_counter()
    importlib.import_module("ai_edge_litert.interpreter" if engine == LITERT else "embed_runtime")
    loaded = time.perf_counter()
    ENGINE_CALLS[engine](path, ids_for(vocab, shape))()
    return {"imports": loaded - start, "cold": time.perf_counter() - loaded}


def cold_start(engine: str, path: Path, case: Case) -> tuple[float, float]:
    """Medians of (cold start, import) over ``case.cold_samples`` fresh subprocesses."""
    samples = []
    for _ in range(case.cold_samples):
        argv = [sys.executable, "-m", "benchmarks.edge_compare", "--child", engine, str(path)]
        argv += [str(n) for n in (case.vocab, *case.shapes[0])]
        env = os.environ | QUIET
        done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return statistics.median(s["cold"] for s in samples), statistics.median(s["imports"] for s in samples)


def keras_models() -> dict[str, Any]:
    """The trained Keras 3 seed and classifier, and the 1M x 64 table model with N(0, 1) rows."""
    import keras

    from models.classifier.train import build_and_train as classifier
    from models.seed.train import build_and_train as seed

    table = keras.layers.Embedding(BIG_ROWS, BIG_DIM, embeddings_initializer="zeros", name="embedding")
    big = keras.Sequential([keras.Input((None,), dtype="int64", name="input_ids"), table])
    rows = np.random.default_rng(0).standard_normal((BIG_ROWS, BIG_DIM), dtype=np.float32)
    table.embeddings.assign(rows)
    return {"seed": seed("keras3"), "classifier": classifier("keras3"), "1M x 64": big}


def to_tflite(model: Any, length: int | None, dtype: str) -> bytes:
    """TensorFlow's converter on ``model`` called on int64 ids ``(None, length)``, float16 weights or
    dynamic-range int8 (``Optimize.DEFAULT``); no trackable object, so the variables are frozen in."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, length], tf.int64)
    function = tf.function(lambda ids: model(ids, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    if dtype != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if dtype == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return bytes(converter.convert())


def artifacts(name: str, model: Any, folder: Path) -> dict[tuple[str, str], Path]:
    """``{(engine, dtype): file}``: our three exports and the three TFLite conversions of ``model``."""
    from exporters import export_keras

    length = model.inputs[0].shape[1]
    files = {}
    for dtype in DTYPES:
        stem = folder / f"{name.replace(' ', '')}-{dtype}"
        export_keras(model, stem.with_suffix(".onnx"), table_dtype=dtype)
        files[OURS, dtype] = stem.with_suffix(".onnx")
        stem.with_suffix(".tflite").write_bytes(to_tflite(model, length, dtype))
        files[LITERT, dtype] = stem.with_suffix(".tflite")
    return files


def disk_bytes(path: Path) -> int:
    """The file plus its external data files (``<name>.*.data``)."""
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".*.data"))


def measure_case(case: Case, model: Any, folder: Path) -> list[Row]:
    """Every measurement of one model, both engines and all three table dtypes."""
    from embed_runtime.timing import measure

    files = artifacts(case.name, model, folder)
    timed: dict[tuple[int, int], dict[tuple[str, str], float]] = {}
    errors: dict[tuple[str, str], float] = {}
    floors: dict[str, float] = {}
    for shape in case.shapes:
        ids = ids_for(case.vocab, shape)
        expected = np.asarray(model(ids, training=False))
        calls = {key: ENGINE_CALLS[key[0]](path, ids) for key, path in files.items()}
        for key, call in calls.items():
            errors[key] = max(errors.get(key, 0.0), float(np.max(np.abs(call() - expected))))
        contenders: dict[str, Callable[[], object]] = {f"{e} {d}": c for (e, d), c in calls.items()}
        if shape == case.shapes[0]:
            contenders |= {f"floor {d}": floor_call(files[OURS, d], ids) for d in DTYPES}
        stats = measure(contenders, budget=case.budget)
        timed[shape] = {key: stats[f"{key[0]} {key[1]}"].median for key in calls}
        floors |= {d: stats[f"floor {d}"].median for d in DTYPES if f"floor {d}" in stats}
        del calls, contenders
    rows = []
    for key, path in files.items():
        cold, imports = cold_start(key[0], path, case)
        floor = floors[key[1]] if key[0] == OURS else float("nan")
        rows.append(
            Row(case.name, key[1], key[0], disk_bytes(path), cold, imports, timed[case.shapes[0]][key],
                timed[case.shapes[1]][key], errors[key], floor)
        )  # fmt: skip
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g} us"


def _pair(rows: dict[str, Row], cell: Callable[[Row], str]) -> str:
    return f"{cell(rows[LITERT])} / {cell(rows[OURS])}"


PAIRED_CELLS: tuple[Callable[[Row], str], ...] = (
    lambda r: f"{r.bytes:,}", lambda r: _ms(r.cold), lambda r: _us(r.small), lambda r: _us(r.batch),
    lambda r: f"{r.error:.2e}",
)  # fmt: skip


def paired(rows: Sequence[Row]) -> list[tuple[str, str, dict[str, Row]]]:
    """``(model, dtype, {engine: row})`` in the order the rows came, both engines present."""
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        groups.setdefault((row.model, row.dtype), {})[row.engine] = row
    return [(m, d, g) for (m, d), g in groups.items() if set(g) == {LITERT, OURS}]


def markdown(rows: Sequence[Row]) -> str:
    """The comparison table: one line per model and table dtype, each cell ``LiteRT / embed_runtime``."""
    header = ["model", "table dtype", "bytes on disk", "cold start", "1x16", "32x10", "1x16 ours / LiteRT",
              "1x16 onnxruntime floor", "max abs error vs Keras"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * (len(header) - 2)]
    for model, dtype, g in paired(rows):
        cells = [model, dtype, *(_pair(g, cell) for cell in PAIRED_CELLS[:4])]
        cells += [f"{g[OURS].small / g[LITERT].small:.2f}", _us(g[OURS].floor), _pair(g, PAIRED_CELLS[4])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PANELS = (("bytes on disk", "bytes", 1.0, True), ("cold start (ms)", "cold", 1e3, True),
          ("1x16 latency (us)", "small", 1e6, False), ("32x10 latency (us)", "batch", 1e6, False))  # fmt: skip


def plot(rows: Sequence[Row], path: Path) -> None:
    """Size and cold start (log scale), 1x16 and 32x10 latency (linear, from 0), LiteRT and embed_runtime
    bars side by side; black ticks on the 1x16 panel mark onnxruntime's floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, ScalarFormatter

    groups = paired(rows)
    x = np.arange(len(groups))
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 11), sharex=True)
    for ax, (title, field, scale, log) in zip(axes, PANELS):
        for offset, engine, colour in ((-0.2, LITERT, "tab:orange"), (0.2, OURS, "tab:blue")):
            values = [getattr(g[engine], field) * scale for _, _, g in groups]
            ax.bar(x + offset, values, 0.4, label=engine, color=colour)
        if log:
            ax.set_yscale("log")
        ax.yaxis.set_major_formatter(EngFormatter("B") if field == "bytes" else ScalarFormatter())
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    floors = [g[OURS].floor * 1e6 for _, _, g in groups]
    axes[2].scatter(x + 0.2, floors, marker="_", s=400, color="black", label="onnxruntime floor", zorder=3)
    for ax in axes[:3]:
        ax.legend(fontsize=8)
    axes[-1].set_xticks(x, [f"{m}\n{d}" for m, d, _ in groups], fontsize=8)
    fig.suptitle("embed_runtime vs LiteRT, 1 thread (lower is better; seed: 1x10 for 1x16)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def section(rows: Sequence[Row], notes: str) -> str:
    """The "Against LiteRT" section (markers not included)."""
    return (
        "## Against LiteRT\n\n"
        "Written by `benchmarks/edge_compare.py`: the same Keras 3 model as our artifact "
        "(`export_keras(table_dtype=...)`, run by `embed_runtime.load(path, threads=1)`) and as TensorFlow's "
        "TFLite conversion (float32; float16 weights; dynamic-range int8), run by the LiteRT interpreter "
        "(`ai_edge_litert`, `num_threads=1`). Each cell is `LiteRT / embed_runtime`. Cold start: load "
        "and first inference in a fresh process (imports not included), median; latencies: per-call "
        "medians of one `set_tensor, invoke, get_tensor` or one `rt.run(ids)`, all six contenders of a model "
        "interleaved in one process.\n\n"
        f"{markdown(rows)}\n\n{notes}\n\n![embed_runtime vs LiteRT](edge-litert.png)\n"
    )


def replace_section(doc: str, text: str) -> str:
    """``doc`` with the text between the markers replaced by ``text``; markers appended when absent."""
    if BEGIN not in doc:
        return f"{doc.rstrip()}\n\n{BEGIN}\n{text.strip()}\n{END}\n"
    head, _, rest = doc.partition(BEGIN)
    if END not in rest:
        raise ValueError(f"{BEGIN!r} has no closing {END!r}; fix the markers by hand")
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{text.strip()}\n{END}{tail}"


def gap_text(rows: Sequence[Row]) -> str:
    """Where the 1x16 time goes: onnxruntime's floor against LiteRT's whole call, and our own layer."""
    groups = [g for _, _, g in paired(rows)]
    floor = [g[OURS].floor / g[LITERT].small for g in groups]
    layer = [g[OURS].small - g[OURS].floor for g in groups]
    return (
        f"On 1x16, onnxruntime alone (`run_with_iobinding` on ids bound once: no validation, no copies) "
        f"takes {min(floor):.2f}-{max(floor):.2f}x LiteRT's whole call; embed_runtime's own layer on top "
        f"of it (checking the ids, copying them into the bound buffer, the result dict) costs "
        f"{min(layer) * 1e6:.3g}-{_us(max(layer))}. Every compact-table node (`Cast`, the scale `Gather` and "
        "`Mul`) adds onnxruntime's per-node cost; LiteRT's per-op cost is much lower (its int8 graph is "
        "`GATHER(int8) -> DEQUANTIZE`, and Keras's index wrap-around adds `LESS, ADD, SELECT`)."
    )


def notes_text(rows: Sequence[Row], seconds: float) -> str:
    """Shapes, conversions, machine and import times."""
    imports = {e: statistics.median(r.imports for r in rows if r.engine == e) for e in (LITERT, OURS)}
    return (
        f"{gap_text(rows)}\n\n"
        "Shapes: batch x length; the seed's length is fixed at 10, so its 1x16 column is 1x10. The TFLite "
        "files are converted from a concrete function on int64 ids `(None, None)` (the seed: `(None, 10)`); "
        "each interpreter is resized once to the timed shape, so LiteRT runs a static graph. Ids: random, "
        "every other row a quarter padding. Errors: max over both shapes against the float Keras model; "
        "the 1M x 64 rows are N(0, 1). Import times (median): "
        f"`ai_edge_litert.interpreter` {_ms(imports[LITERT])}, `embed_runtime` {_ms(imports[OURS])}. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; whole run {seconds:.0f} s."
    )


def write_doc(rows: Sequence[Row], seconds: float, doc: Path = DOC, image: Path = PLOT) -> None:
    """Write the plot and replace the section in ``doc``, re-read right before writing."""
    plot(rows, image)
    text = section(rows, notes_text(rows, seconds))
    doc.write_text(replace_section(doc.read_text(), text))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=5, metavar=("ENGINE", "PATH", "VOCAB", "BATCH", "LENGTH"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/edge.md and the plot")
    parser.add_argument("--models", nargs="+", default=[c.name for c in CASES])
    args = parser.parse_args(argv)
    if args.child:
        engine, path, vocab, batch, length = args.child
        print(json.dumps(child(engine, Path(path), int(vocab), (int(batch), int(length)))))
        return
    os.environ.update(QUIET)
    start = time.perf_counter()
    models = keras_models()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if case.name in args.models:
                rows += measure_case(case, models[case.name], Path(tmp))
                print(f"{case.name}: done after {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if not args.no_doc:
        write_doc(rows, seconds)


if __name__ == "__main__":
    main()
