"""``benchmarks/gpu_check.py``: the CPU dry run goes through every step and writes a complete report; a
wrong golden output fails it; without a GPU provider it stops with one ``no GPU provider`` line.
TensorFlow-free: numpy, onnxruntime and the committed models only."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embed_runtime.providers import PLUGIN_EPS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MODELS = sorted(
    p.parent for p in (ROOT / "models").glob("*/model.onnx") if (p.parent / "golden.npz").is_file()
)
CONTENDERS = ("cpu rt.run", "gpu rt.run", "gpu rt.run(device_outputs=True)")
QUICK = ["--dry-run-cpu", "--budget", "0.002", "--shapes", "1x16", "3x10"]


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu_check") / "report"
    return run_check(str(out), *QUICK), out


def golden_outputs(folder: Path) -> dict[str, np.dtype[Any]]:
    with np.load(folder / "golden.npz") as data:
        return {k.removeprefix("output."): data[k].dtype for k in data.files if k.startswith("output.")}


def test_dry_run_reports_parity_providers_and_timings(
    dry_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["dry_run"] and report["failures"] == []
    assert report["providers_checked"] == ["CPUExecutionProvider"]
    assert [r["provider"] for r in report["plugin_eps"]] == [p.provider for p in PLUGIN_EPS]
    assert [r["model"] for r in report["parity"]] == [f.name for f in MODELS]
    for record, folder in zip(report["parity"], MODELS):
        assert record["session_providers"][0] == "CPUExecutionProvider" and record["on_provider"]
        device = record["device_outputs"]
        assert (
            device["bound_to"] == "cpu:0" and device["devices"] == ["cpu"] and "zero-copy" in device["dlpack"]
        )
        for outputs in (record["outputs"], record["outputs_again"], device["outputs"]):
            assert set(outputs) == set(golden_outputs(folder))
            for name, dtype in golden_outputs(folder).items():
                if dtype == np.bool_:
                    assert outputs[name]["masks_equal"] is True
                else:
                    assert 0 <= outputs[name]["max_abs_diff"] <= 1e-5
    assert len(report["timings"]) == 2 * len(MODELS)
    for timing in report["timings"]:
        assert all(timing["stats"][c]["median_s"] > 0 for c in CONTENDERS)
        assert timing["cpu_over_gpu"] > 0
    seed = {t["shape"]: t["input_shapes"] for t in report["timings"] if t["model"] == "seed"}
    assert seed["1x16"] == {"input_ids": [1, 10]}  # the seed model's fixed length replaces 16
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# GPU check: PASS (dry run")
    assert all(f"| {f.name} |" in markdown for f in MODELS)
    assert "1x16 (1x10)" in markdown


def test_a_parity_failure_fails_the_check(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "tagger", models / "tagger")
    with np.load(models / "tagger" / "golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.tags"] = arrays["output.tags"] + np.float32(1e-3)
    np.savez(models / "tagger" / "golden.npz", **arrays)
    proc = run_check(str(tmp_path / "out"), *QUICK, "--shapes", "1x16", "--models", str(models))
    assert proc.returncode == 1
    assert "FAIL tagger on CPUExecutionProvider: outputs differ" in proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (record,) = report["parity"]
    assert not report["ok"] and not record["ok"]
    assert record["outputs"]["tags"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert record["outputs"]["mask"]["masks_equal"] is True
    assert (tmp_path / "out" / "report.md").read_text().startswith("# GPU check: FAIL")


def test_no_gpu_provider_is_one_line_and_exit_status_2(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.gpu_providers():
        pytest.skip(f"this machine has a GPU provider: {module.gpu_providers()}")
    proc = run_check(str(tmp_path / "out"))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("no GPU provider: ")
    assert all(name in line for name in ("WebGpuExecutionProvider", "CUDAExecutionProvider", "--dry-run-cpu"))
    assert not (tmp_path / "out").exists()
