"""``import embed_runtime`` and running a model load no TensorFlow, Keras, tf2onnx or onnx."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import Built

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx")

SCRIPT = """
import json, sys
import embed_runtime
import embed_runtime.cli
rt = embed_runtime.load(sys.argv[1])
out = rt.run([[1, 2, 0]])
assert out["mask"].tolist() == [[True, True, False]]
embed_runtime.cli.main(["info", sys.argv[1]])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
"""


def test_no_tensorflow_or_onnx_loaded(single: Built) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT % (FORBIDDEN,), str(single.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"embed_runtime imported {loaded}"
