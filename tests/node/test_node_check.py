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


def _docstring_lines() -> list[str]:
    """Lines of the multi-script file and of some standard-library docstrings (nobody here wrote them)."""
    import importlib
    import pydoc

    lines = [(REPO / "tests" / "export" / "data" / "multiscript.txt").read_text(encoding="utf-8")]
    for module in ("json", "collections", "argparse", "logging", "email", "typing"):
        mod = importlib.import_module(module)
        lines += [pydoc.getdoc(mod)] + [pydoc.getdoc(getattr(mod, a)) for a in sorted(dir(mod))]
    return [line for doc in lines for line in doc.split("\n")]  # not splitlines(): keep U+2028 in lines


def _check_against_python(folder: Path, texts: list[Any]) -> None:
    """texts.json and a golden.npz of ``embed_runtime``'s ids and outputs beside ``folder/model.onnx``;
    the JS tokenizer must give those ids and onnxruntime-node those outputs."""
    import numpy as np

    import embed_runtime

    rt = embed_runtime.load(folder / "model.onnx", providers="cpu")
    (folder / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    arrays: dict[str, Any] = {f"output.{k}": v for k, v in rt.run(texts).items()}
    arrays[f"input.{rt.inputs[0].name}"] = rt.tokenize(texts)[0]
    np.savez(folder / "golden.npz", **arrays)
    proc = _run(str(folder.parent))
    assert proc.returncode == 0, proc.stdout
    assert f"ids tokenized in JS equal golden.npz's for {len(texts)} texts" in proc.stdout


def test_node_tokenizer_equals_python_on_real_text(tmp_path: Path) -> None:
    """On ~2,000 lines nobody here wrote (standard-library docstrings and the multi-script corpus: accents,
    Cyrillic, Greek, CJK, emoji, combining marks, tabs, no-break spaces), the JS tokenizer gives the ids
    ``embed_runtime`` gives, and onnxruntime-node the same outputs. Rows without a single token are left
    out: the model averages them as 0/0 (NaN), in Keras too."""
    import embed_runtime

    (name,) = _text_models()[:1]
    texts = _docstring_lines()
    rt = embed_runtime.load(MODELS / name / "model.onnx", providers="cpu")
    texts = [t for t, row in zip(texts, rt.tokenize(texts)[1]) if row.any()]
    assert len(texts) > 1500
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(MODELS / name / "model.onnx", folder)
    _check_against_python(folder, texts)


def test_node_hashes_oov_tokens_as_python(tmp_path: Path) -> None:
    """A StringLookup spec with ``num_oov_indices=3`` (the reference model's table, its ids 1..3 declared
    OOV ids): on docstring tokens, most out of vocabulary, and tokens of every length 0..300 (each of
    FarmHash's length paths), the JS Fingerprint64 gives the ids ``embed_runtime`` gives (which
    tests/export/test_text_oov.py proves equal to Keras's and TensorFlow's)."""
    import onnx
    from onnx import helper

    (name,) = _text_models()[:1]
    model = onnx.load(str(MODELS / name / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(props["embed_runtime.text"])["text"]
    vocabulary = ["", "[UNK]", "[UNK]", "[UNK]", *spec["vocabulary"][4:]]
    spec.update(
        layer_class="StringLookup", standardize=None, split=None, num_oov_indices=3, vocabulary=vocabulary
    )
    del model.metadata_props[:]
    helper.set_model_props(model, {**props, "embed_runtime.text": json.dumps({"text": spec})})
    folder = tmp_path / name
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    words = [w for line in _docstring_lines() for w in line.split()][:4000]
    joined = "".join(words)
    tokens = words + [joined[:n] for n in range(301)] + ["", "[UNK]", "日本語", "🙂" * 20]
    tokens += ["pad"] * (-len(tokens) % 8)
    _check_against_python(folder, [tokens[i : i + 8] for i in range(0, len(tokens), 8)])


def test_node_runs_an_in_graph_lookup_on_string_tensors(tmp_path: Path) -> None:
    """A StringLookup exported with its lookup in the graph (ai.onnx.ml LabelEncoder; the committed
    fixture tests/runtime/data/string_lookup.onnx, built by the script beside it): onnxruntime-node runs it
    on string tensors, rows of docstring and multi-script tokens, ragged ones padded with the mask token,
    and gives the outputs and mask ``embed_runtime`` gives (which tests/runtime/test_text.py holds to
    Keras's); the JS lookup of the declared spec gives the same ids."""
    fixture = REPO / "tests" / "runtime" / "data" / "string_lookup.onnx"
    folder = tmp_path / "string_lookup"
    folder.mkdir()
    shutil.copy(fixture, folder / "model.onnx")
    golden_rows = json.loads(fixture.with_suffix(".json").read_text(encoding="utf-8"))["rows"]
    words = [w for line in _docstring_lines() for w in line.split()][:3000]
    words += ["the", "cat", "дом", "日本", "🙂", "", "[UNK]"] * 20
    rows = [words[i : i + 1 + i % 7] for i in range(0, len(words), 7)]  # ragged: 1 to 7 tokens
    texts = [*golden_rows, *rows]
    _check_against_python(folder, texts)
    proc = _run(str(tmp_path))
    assert (
        f"PASS string_lookup from strings: ids tokenized in JS equal golden.npz's for {len(texts)} texts; "
        "strings fed to the graph's own lookup" in proc.stdout
    )
