"""How the compact artifacts under examples/web/models/ were made (needs the full .venv, with TensorFlow).

    .venv/bin/python examples/web/make_models.py

The seed model (``models.seed``, its committed Keras flavour) is rebuilt holding the table of the committed
``models/seed/model.onnx``, so its outputs are the committed Keras golden (``models/seed/golden.npz``), and
exported with ``export_keras(..., table_dtype="float16" | "int8")``. For each artifact it writes:

- ``seed-<dtype>.onnx``: the artifact;
- ``seed-<dtype>.golden.npz``: onnxruntime-python's outputs on the golden ids (``input.<name>``,
  ``output.<name>``, the layout of ``golden.npz``): the browser must give these within 1e-5;
- an entry in ``manifest.json``: the artifact, its golden, and ``keras_bound``, the error bound vs the Keras
  golden the export stated (the largest per-element bound of a table row: half a float16 step, or ``scale/2``
  of the widest int8 row), with the measured ``keras_max_abs_diff``.

The float32 entry is the committed artifact itself, held to its Keras golden within 1e-5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "models"
SEED = REPO / "models" / "seed"
FLOAT_ATOL = 1e-5  # the Node.js check's tolerance (tests/node/check.mjs)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def seed_keras_model() -> Any:
    """The seed model holding the committed artifact's table."""
    import onnx
    from onnx import numpy_helper

    from models.seed import INFO
    from models.seed.train import build

    (table,) = (numpy_helper.to_array(t) for t in onnx.load(SEED / "model.onnx").graph.initializer)
    model = build(INFO.committed_flavour, seed=0)
    model.build((None, table.shape[0]))
    model.get_layer("embedding").set_weights([table])
    return model


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def main() -> int:
    sys.path.insert(0, str(REPO))
    from exporters import export_keras

    golden = dict(np.load(SEED / "golden.npz"))
    feeds = {k.removeprefix("input."): v for k, v in golden.items() if k.startswith("input.")}
    keras_out = {k.removeprefix("output."): v for k, v in golden.items() if k.startswith("output.")}
    model = seed_keras_model()
    mine = model.predict(feeds["input_ids"], verbose=0)
    if float(np.abs(mine - keras_out["embedding"]).max()) != 0.0:
        raise SystemExit("the rebuilt seed model does not reproduce models/seed/golden.npz")

    OUT.mkdir(exist_ok=True)
    entries: list[dict[str, Any]] = [
        {
            "name": "seed float32",
            "table_dtype": "float32",
            "model": _rel(SEED / "model.onnx"),
            "golden": _rel(SEED / "golden.npz"),
            "keras_bound": FLOAT_ATOL,
            "keras_max_abs_diff": 0.0,
            "bytes": (SEED / "model.onnx").stat().st_size,
        }
    ]
    for dtype in ("float16", "int8"):
        path = OUT / f"seed-{dtype}.onnx"
        report = export_keras(model, path, table_dtype=dtype)
        print(report)
        assert report.parity is not None and report.parity.tables, "a compact export reports its tables"
        outputs = run_ort(path, feeds)
        arrays = {f"input.{k}": v for k, v in feeds.items()} | {f"output.{k}": v for k, v in outputs.items()}
        golden_path = OUT / f"seed-{dtype}.golden.npz"
        np.savez_compressed(golden_path, **arrays)
        bound = max(t.max_bound for t in report.parity.tables)
        diff = max(float(np.abs(outputs[k] - v).max()) for k, v in keras_out.items())
        if not diff <= bound:
            raise SystemExit(
                f"{path.name}: onnxruntime vs Keras {diff:.3g} exceeds the stated bound {bound:.3g}"
            )
        entries.append(
            {
                "name": f"seed {dtype}",
                "table_dtype": dtype,
                "model": _rel(path),
                "golden": _rel(golden_path),
                "keras_bound": bound,
                "keras_max_abs_diff": diff,
                "bytes": path.stat().st_size,
            }
        )
    manifest = {"keras_golden": _rel(SEED / "golden.npz"), "float_atol": FLOAT_ATOL, "artifacts": entries}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for e in entries:
        print(
            f"{e['name']}: {e['bytes']:,} bytes, vs Keras {e['keras_max_abs_diff']:.3g} <= {e['keras_bound']:.3g}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
