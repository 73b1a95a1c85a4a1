"""Cross-language proof: the committed models/*/model.onnx, run in onnxruntime-node (tests/node/check.mjs),
give the Keras outputs stored beside them in golden.npz (floats within 1e-5 absolute, masks equal); a text
model (texts.json) also from its strings, tokenized in JavaScript by the spec the artifact declares.

Needs `node` and `npm` on PATH and the npm registry reachable the first time (run.sh runs `npm ci`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

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


def _text_models() -> list[str]:
    return sorted(p.parent.name for p in MODELS.glob("*/texts.json") if (p.parent / "model.onnx").is_file())


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


def test_node_matches_keras_on_every_committed_model() -> None:
    models = _committed_models()
    assert models, f"no models/*/model.onnx under {MODELS}"
    proc = _run()
    assert proc.returncode == 0, f"check.mjs failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for name in models:
        assert any(line.startswith(f"PASS {name}: ") for line in lines), (
            f"no PASS line for {name}:\n{proc.stdout}"
        )
    assert _text_models(), "no committed text model (models/*/texts.json)"
    for name in _text_models():
        assert any(
            line.startswith(f"PASS {name} from strings: ids tokenized in JS equal golden.npz's")
            for line in lines
        )


def test_node_check_rejects_strings_that_are_not_keras_s(tmp_path: Path) -> None:
    """The JS tokenizer's ids are compared with Keras's: a golden string swapped for another fails."""
    (name,) = _text_models()[:1]
    folder = tmp_path / name
    shutil.copytree(MODELS / name, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
    texts[0] = texts[1]
    (folder / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    proc = _run(str(tmp_path))
    assert proc.returncode == 1
    assert f"PASS {name}: " in proc.stdout  # the ids in golden.npz still give Keras's outputs
    assert "tokenized in JS" in proc.stdout and "differ from golden.npz's" in proc.stdout


def test_node_check_rejects_perturbed_goldens() -> None:
    proc = _run("--self-test")
    assert proc.returncode == 0, (
        f"check.mjs --self-test failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    assert "PASS self-test:" in proc.stdout


def test_node_check_fails_without_fixtures(tmp_path: Path) -> None:
    proc = _run(str(tmp_path))
    assert proc.returncode != 0
    assert "no fixtures" in proc.stdout


def test_node_tokenizer_equals_python_on_real_text(tmp_path: Path) -> None:
    """On ~2,000 lines nobody here wrote (standard-library docstrings and the multi-script corpus: accents,
    Cyrillic, Greek, CJK, emoji, combining marks, tabs, no-break spaces), the JS tokenizer gives the ids
    ``embed_runtime`` gives, and onnxruntime-node the same outputs. Rows without a single token are left
    out: the model averages them as 0/0 (NaN), in Keras too."""
    import importlib
    import pydoc

    import numpy as np

    import embed_runtime

    (name,) = _text_models()[:1]
    lines = [(REPO / "tests" / "export" / "data" / "multiscript.txt").read_text(encoding="utf-8")]
    for module in ("json", "collections", "argparse", "logging", "email", "typing"):
        mod = importlib.import_module(module)
        lines += [pydoc.getdoc(mod)] + [pydoc.getdoc(getattr(mod, a)) for a in sorted(dir(mod))]
    texts = [line for doc in lines for line in doc.split("\n")]  # not splitlines(): keep U+2028 in lines
    rt = embed_runtime.load(MODELS / name / "model.onnx", providers="cpu")
    texts = [t for t, row in zip(texts, rt.tokenize(texts)[1]) if row.any()]
    assert len(texts) > 1500
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(MODELS / name / "model.onnx", folder)
    (folder / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    ids, _ = rt.tokenize(texts)
    arrays: dict[str, Any] = {f"output.{k}": v for k, v in rt.run(texts).items()}
    arrays[f"input.{rt.inputs[0].name}"] = ids
    np.savez(folder / "golden.npz", **arrays)
    proc = _run(str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert f"ids tokenized in JS equal golden.npz's for {len(texts)} texts" in proc.stdout
