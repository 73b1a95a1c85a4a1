"""Cross-language proof: the committed models/*/model.onnx, run in onnxruntime-node (tests/node/check.mjs),
give the Keras outputs stored beside them in golden.npz (floats within 1e-5 absolute, masks equal).

Needs `node` and `npm` on PATH and the npm registry reachable the first time (run.sh runs `npm ci`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODELS = REPO / "models"
RUN = HERE / "run.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node/npm not on PATH: the Node.js cross-language check cannot run here",
)


def _committed_models() -> list[str]:
    return sorted(p.parent.name for p in MODELS.glob("*/model.onnx"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(RUN), *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=900,  # the first run installs onnxruntime-node with npm ci
    )
    print(proc.stdout)
    print(proc.stderr)
    return proc


def test_node_matches_keras_on_every_committed_model():
    models = _committed_models()
    assert models, f"no models/*/model.onnx under {MODELS}"
    proc = _run()
    assert proc.returncode == 0, f"check.mjs failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for name in models:
        assert any(line.startswith(f"PASS {name}: ") for line in lines), (
            f"no PASS line for {name}:\n{proc.stdout}"
        )


def test_node_check_rejects_perturbed_goldens():
    proc = _run("--self-test")
    assert proc.returncode == 0, (
        f"check.mjs --self-test failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    assert "PASS self-test:" in proc.stdout


def test_node_check_fails_without_fixtures(tmp_path):
    proc = _run(str(tmp_path))
    assert proc.returncode != 0
    assert "no fixtures" in proc.stdout
