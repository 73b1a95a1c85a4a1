"""embed_runtime against LiteRT (TFLite) on the same Keras 3 models (issue 13, item 5).

The trained seed and classifier and a 1M x 64 table (N(0, 1) rows), each in float32, float16 and int8:
our artifact (``export_keras(table_dtype=...)``, run by ``embed_runtime.load(path, threads=1)``) and
TensorFlow's TFLite conversion (float32, float16, dynamic-range int8; run by ``ai_edge_litert``'s
interpreter, ``num_threads=1``). One run measures bytes on disk, cold start (load and first inference in
fresh subprocesses, median), 1x16 and 32x10 latency (contenders interleaved by
:func:`embed_runtime.timing.measure`), which path of the runtime ran (``rt.execution``: the numpy lookup
path or onnxruntime), the max abs error against Keras, and onnxruntime's 1x16 floor on the classifier
under a few session options, then writes the "Against LiteRT" section of ``docs/edge.md`` (between its
markers only, the prose included) and ``docs/edge-litert.png`` (the report: ``benchmarks/edge_report.py``).

    python -m benchmarks.edge_compare       # from the repository root (TensorFlow, ai-edge-litert); ~2-4 min
    python -m benchmarks.edge_compare --json out.json --no-doc --models seed classifier
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the report beside this script, run as a file too
from edge_report import LITERT, OURS, Row, Variants, markdown, write_doc

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float16", "int8")
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


def path_ran(path: Path) -> str:
    """Which path of the runtime serves ``path``: ``numpy lookup`` or ``onnxruntime`` (``rt.execution``)."""
    import embed_runtime

    return embed_runtime.load(path, providers="cpu", threads=1).execution.split(" (")[0].split(":")[0]


SESSION_VARIANTS: dict[str, dict[str, Any]] = {
    "default (all optimizations)": {},
    "graph optimization extended": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    "graph optimization basic": {"graph_optimization_level": "ORT_ENABLE_BASIC"},
    "graph optimization off": {"graph_optimization_level": "ORT_DISABLE_ALL"},
    "no memory pattern, no arena": {"enable_mem_pattern": False, "enable_cpu_mem_arena": False},
}
"""Session options tried on the classifier's onnxruntime floor: ``SessionOptions`` attributes."""


def floor_call(path: Path, ids: np.ndarray, **settings: Any) -> Callable[[], object]:
    """onnxruntime alone: ``run_with_iobinding`` on ``ids`` bound once (no validation, no copies): the
    least a call through onnxruntime's Python API costs; ``settings`` are ``SessionOptions`` attributes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for key, value in settings.items():
        setattr(
            options, key, getattr(ort.GraphOptimizationLevel, value) if key.startswith("graph") else value
        )
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
                timed[case.shapes[1]][key], errors[key], floor, path_ran(path) if key[0] == OURS else "")
        )  # fmt: skip
    return rows


def session_variants(model: str, path: Path, ids: np.ndarray, budget: float) -> Variants:
    """onnxruntime's floor on ``path`` under each of :data:`SESSION_VARIANTS`, interleaved, and its ops."""
    import onnx

    from embed_runtime.timing import measure

    stats = measure({name: floor_call(path, ids, **settings) for name, settings in SESSION_VARIANTS.items()},
                    budget=budget)  # fmt: skip
    from exporters.report import op_counts

    ops = op_counts(onnx.load(str(path)).graph.node)
    return Variants(model, {name: s.median for name, s in stats.items()}, ops)


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
    variants = None
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if case.name in args.models:
                rows += measure_case(case, models[case.name], Path(tmp))
                print(f"{case.name}: done after {time.perf_counter() - start:.0f} s", flush=True)
            if case.name == "classifier" and case.name in args.models:
                ids = ids_for(case.vocab, case.shapes[0])
                variants = session_variants(
                    case.name, Path(tmp) / "classifier-float32.onnx", ids, case.budget
                )
    seconds = time.perf_counter() - start
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if not args.no_doc:
        write_doc(rows, seconds, variants=variants)


if __name__ == "__main__":
    main()
