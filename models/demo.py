"""The main job on built-in defaults: ``python -m models.demo`` (``make demo``).

1. trains the seed's own model, ``Sequential([Embedding(1000, 64, input_length=10)])`` (tf-keras, the
   seed's flavour), compiled with ``rmsprop``/``mse``;
2. exports it through tf2onnx with :func:`exporters.export_keras` (verified against Keras at export);
3. loads the ``.onnx`` in a fresh Python process that imports ``embed_runtime`` only, proves TensorFlow
   never got imported there, and runs the seed's ``randint(1000, size=(32, 10))`` batch;
4. prints the graph's inputs and outputs, the parity against Keras ``predict``, and how fast the runtime
   answers next to Keras ``predict``;
5. strings in: runs the committed text model (``models/text``) on raw strings and prints each prediction
   and mask, and its parity with Keras's recorded ids and outputs on the golden strings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RUNTIME_SIDE = r"""
import json, sys, time
import numpy as np
import embed_runtime

model, ids_path, out_path = sys.argv[1:4]
rt = embed_runtime.load(model)
ids = np.load(ids_path)
out = rt.run(ids)
np.savez(out_path, **out)

def median_us(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)

heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "tf2onnx") if m in sys.modules)
print(json.dumps({
    "providers": rt.providers,
    "inputs": [[s.name, str(s.dtype), [n or d for d, n in zip(s.shape, s.dim_names)]] for s in rt.inputs],
    "outputs": [[s.name, str(s.dtype), [n or d for d, n in zip(s.shape, s.dim_names)]] for s in rt.outputs],
    "heavy_modules_imported": heavy,
    "run_1x10_us": median_us(lambda: rt.run(ids[:1]), 2000),
    "run_32x10_us": median_us(lambda: rt.run(ids), 2000),
}))
"""


def _median_us(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def main(argv: list[str] | None = None) -> int:
    """Train, export, run without TensorFlow, prove parity; returns 0 when parity holds."""
    parser = argparse.ArgumentParser(prog="python -m models.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="build/demo", help="folder for the demo's files (default build/demo)"
    )
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from exporters import export_keras
    from models.seed.train import build_and_train

    print("1. training the seed model: Sequential([Embedding(1000, 64, input_length=10)]), rmsprop/mse")
    model = build_and_train("tf_keras")
    ids = np.random.default_rng(0).integers(1000, size=(32, 10))
    expected = model.predict(ids, verbose=0)
    assert expected.shape == (32, 10, 64)
    print(f"   Keras predict on randint(1000, size=(32, 10)) -> {expected.shape}\n")

    print("2. exporting through tf2onnx (checked against Keras before writing)")
    report = export_keras(model, out_dir / "seed.onnx")
    print("   " + str(report).replace("\n", "\n   ") + "\n")

    print("3. running it in a fresh process with embed_runtime only (numpy + onnxruntime)")
    np.save(out_dir / "ids.npy", ids)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNTIME_SIDE,
            str(out_dir / "seed.onnx"),
            str(out_dir / "ids.npy"),
            str(out_dir / "runtime_out.npz"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"   providers in use: {', '.join(facts['providers'])}")
    for kind in ("inputs", "outputs"):
        for name, dtype, shape in facts[kind]:
            dims = ", ".join("?" if d is None else str(d) for d in shape)  # symbolic axes by name
            print(f"   {kind[:-1]:<6} {name}: {dtype}({dims})")
    heavy = facts["heavy_modules_imported"]
    print(f"   TensorFlow/Keras/tf2onnx imported by the runtime process: {heavy or 'none'}\n")

    got = np.load(out_dir / "runtime_out.npz")
    (name,) = got.files
    diff = float(np.max(np.abs(got[name] - expected)))
    ok = got[name].shape == (32, 10, 64) and diff <= 1e-5 and not heavy
    print(
        f"4. parity: runtime {got[name].shape} vs Keras predict {expected.shape}: max |diff| = {diff:.2e} "
        f"(tolerance 1e-5) -> {'OK' if ok else 'FAILED'}"
    )
    predict_1 = _median_us(lambda: model.predict(ids[:1], verbose=0), 30)
    predict_32 = _median_us(lambda: model.predict(ids, verbose=0), 30)
    print("\n   median latency      Keras predict    embed_runtime    speed-up")
    print(
        f"   1 x 10 ids       {predict_1:>12,.0f} us {facts['run_1x10_us']:>12,.1f} us "
        f"{predict_1 / facts['run_1x10_us']:>10,.0f}x"
    )
    print(
        f"   32 x 10 ids      {predict_32:>12,.0f} us {facts['run_32x10_us']:>12,.1f} us "
        f"{predict_32 / facts['run_32x10_us']:>10,.0f}x"
    )
    return 0 if text_section() and ok else 1


def text_section() -> bool:
    """Step 5: strings in, prediction and mask out; True when the golden strings reproduce Keras."""
    import embed_runtime
    from models import info

    text = info("text")
    rt = embed_runtime.load(text.onnx_path, providers="cpu")
    print("\n5. strings in: models/text (TextVectorization -> Embedding(mask_zero) -> classifier), no Keras")
    samples = [
        "Return the final component of a pathname.",
        "Split the string at the last occurrence of sep.",
        "",
    ]
    out = rt.run(samples)
    for sample, probability, mask in zip(samples, out["probability"][:, 0], out["mask"]):
        tokens = int(mask.sum())
        note = "  (all padding: Keras averages 0/0 too)" if not tokens else ""
        print(f"   {sample!r:<50} file-system {probability:.3f}  mask: {tokens} of {mask.size} real{note}")
    texts = json.loads((text.folder / "texts.json").read_text(encoding="utf-8"))
    with np.load(text.golden_path) as golden:
        ids, out = rt.tokenize(texts)[0], rt.run(texts)
        same_ids = bool(np.array_equal(ids, golden["input.text"]))
        diff = float(np.max(np.abs(out["probability"] - golden["output.probability"])))
        masks = bool(np.array_equal(out["mask"], golden["output.mask"]))
    ok = same_ids and masks and diff <= 1e-5
    print(
        f"   {len(texts)} golden strings: ids equal Keras's: {same_ids}; max |diff| {diff:.2e}; masks equal: "
        f"{masks} -> {'OK' if ok else 'FAILED'}"
    )
    return ok


if __name__ == "__main__":
    sys.exit(main())
