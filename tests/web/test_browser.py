"""The artifacts listed in examples/web/models/manifest.json (the committed seed model, float32, and its
float16 and int8 exports) run in onnxruntime-web (wasm) in a real headless Chromium, from the static page
examples/web/index.html: each gives its golden outputs within 1e-5 (the Node.js check's tolerance) and the
Keras golden within the error bound its export stated.

Needs `node`, `npm` and Chromium (`chromium` on PATH, or $EMBED_CHROMIUM); skipped without them unless
$EMBED_REQUIRE_BROWSER=1 (CI), which makes their absence a failure. The first run installs
examples/web/node_modules with `npm ci`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "examples" / "web"
MANIFEST = json.loads((WEB / "models" / "manifest.json").read_text())
ARTIFACTS = {a["name"]: a for a in MANIFEST["artifacts"]}
FLOAT_ATOL = 1e-5  # tests/node/check.mjs
BROWSER_BUDGET_S = 60


def _chromium() -> str | None:
    given = os.environ.get("EMBED_CHROMIUM")
    if given:
        return shutil.which(given)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> list[str]:
    tools = {"node": shutil.which("node"), "npm": shutil.which("npm"), "chromium": _chromium()}
    return [name for name, path in tools.items() if path is None]


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(REPO / path) as z:
        return dict(z)


def _io(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(f"{kind}."): v for k, v in arrays.items() if k.startswith(f"{kind}.")}


def _serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_web_serve", WEB / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npm_ci() -> None:
    """`npm ci` when node_modules is missing or older than the lockfile (as tests/node/run.sh does)."""
    stamp = WEB / "node_modules" / ".package-lock.json"
    lock, package = WEB / "package-lock.json", WEB / "package.json"
    if stamp.exists() and stamp.stat().st_mtime >= max(lock.stat().st_mtime, package.stat().st_mtime):
        return
    env = os.environ | {"PUPPETEER_SKIP_DOWNLOAD": "1"}
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=WEB,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"npm ci in {WEB} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One Chromium session: every artifact on its golden ids, then the page's own form, screenshotted."""
    missing = _missing()
    if missing:
        reason = f"{', '.join(missing)} not found: the browser check (onnxruntime-web in Chromium) cannot run"
        if os.environ.get("EMBED_REQUIRE_BROWSER") == "1":
            pytest.fail(f"EMBED_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    _npm_ci()
    jobs = [
        {
            "model": a["model"],
            "feeds": {
                k: {"dims": list(v.shape), "data": v.ravel().tolist()}
                for k, v in _io(_load(a["golden"]), "input").items()
            },
        }
        for a in MANIFEST["artifacts"]
    ]
    shot = tmp_path_factory.mktemp("web") / "page.png"
    server, url = _serve_module().start()
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [
                "node",
                str(WEB / "browser.mjs"),
                "--url",
                url,
                "--chromium",
                str(_chromium()),
                "--screenshot",
                str(shot),
            ],
            input=json.dumps(jobs),
            capture_output=True,
            text=True,
            timeout=BROWSER_BUDGET_S,
        )
    finally:
        server.shutdown()
        server.server_close()
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"browser.mjs failed (exit {proc.returncode}):\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout)
    print(f"{result['ort']} in {result['userAgent']}: {seconds:.1f} s")
    return {"by_model": {r["model"]: r for r in result["results"]}, "screenshot": shot, "seconds": seconds}


def _browser_outputs(run: dict[str, Any], artifact: dict[str, Any]) -> dict[str, np.ndarray]:
    out = run["by_model"][artifact["model"]]["outputs"]
    return {n: np.asarray(t["data"], dtype=t["type"]).reshape(t["dims"]) for n, t in out.items()}


def _max_abs_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    assert sorted(got) == sorted(want), (
        f"outputs {sorted(got)} from the browser, {sorted(want)} in the golden"
    )
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, (
            f"{name}: {got[name].dtype}{got[name].shape} from the browser, {w.dtype}{w.shape} in the golden"
        )
    return max(float(np.abs(got[n].astype(np.float64) - w.astype(np.float64)).max()) for n, w in want.items())


def test_manifest_has_the_three_table_dtypes_on_the_keras_golden_ids() -> None:
    assert [a["table_dtype"] for a in MANIFEST["artifacts"]] == ["float32", "float16", "int8"]
    keras_ids = _io(_load(MANIFEST["keras_golden"]), "input")
    for a in MANIFEST["artifacts"]:
        assert (REPO / a["model"]).stat().st_size == a["bytes"], (
            f"{a['model']} is not the file make_models.py wrote"
        )
        ids = _io(_load(a["golden"]), "input")
        assert ids.keys() == keras_ids.keys() and all(np.array_equal(ids[k], keras_ids[k]) for k in ids)


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_browser_gives_the_golden_outputs(browser_run: dict[str, Any], name: str) -> None:
    artifact = ARTIFACTS[name]
    got = _browser_outputs(browser_run, artifact)
    vs_golden = _max_abs_diff(got, _io(_load(artifact["golden"]), "output"))
    vs_keras = _max_abs_diff(got, _io(_load(MANIFEST["keras_golden"]), "output"))
    print(
        f"{name}: browser vs golden {vs_golden:.3g} (<= {FLOAT_ATOL:g}), vs Keras {vs_keras:.3g} "
        f"(<= {artifact['keras_bound']:.3g})"
    )
    assert vs_golden <= FLOAT_ATOL, (
        f"{name}: browser vs {artifact['golden']} {vs_golden:.3g} > {FLOAT_ATOL:g}"
    )
    assert vs_keras <= artifact["keras_bound"], (
        f"{name}: browser vs the Keras golden {vs_keras:.3g} > the stated bound {artifact['keras_bound']:.3g}"
    )


@pytest.mark.parametrize("name", [n for n, a in ARTIFACTS.items() if a["table_dtype"] != "float32"])
def test_browser_ran_the_compact_table_not_the_float_one(browser_run: dict[str, Any], name: str) -> None:
    """The compact artifacts' outputs differ from Keras by more than the float tolerance: the parity above
    is the compact table's, read in the browser, not a float32 file's."""
    got = _browser_outputs(browser_run, ARTIFACTS[name])
    assert _max_abs_diff(got, _io(_load(MANIFEST["keras_golden"]), "output")) > FLOAT_ATOL


def test_page_runs_its_own_form_within_budget(browser_run: dict[str, Any]) -> None:
    shot: Path = browser_run["screenshot"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    assert shot.stat().st_size > 10_000, f"{shot} is too small to show the page"
    assert browser_run["seconds"] < BROWSER_BUDGET_S
