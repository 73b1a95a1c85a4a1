"""One-command GPU check (issue 17): parity of every committed reference model on each GPU execution
provider, CPU vs GPU timings, and a JSON + Markdown report.

    python benchmarks/gpu_check.py OUT_DIR                 # on a machine with a GPU provider
    python benchmarks/gpu_check.py OUT_DIR --dry-run-cpu   # CI: every step, the CPU standing in

GPU providers: every row of :data:`embed_runtime.providers.PLUGIN_EPS` whose package is installed (the
WebGPU plugin EP today) and the built-in CUDA/TensorRT providers of onnxruntime-gpu. For each one and each
``models/*/model.onnx`` with a ``golden.npz``:

* parity: ``embed_runtime.load(model, providers=[gpu])`` must really run on that provider (``rt.providers``
  starts with it: no silent CPU fallback) and reproduce the golden outputs, twice (the second call takes
  the IO-binding path), within the CPU suite's tolerance (``tests/runtime/test_golden.py``: atol 1e-5,
  masks equal); the same through ``rt.run(..., device_outputs=True)``, read back with ``to_numpy()``,
  with where the outputs stayed and whether DLPack shares their memory;
* timings (:func:`embed_runtime.timing.measure`, bounded by ``--budget`` per contender and ``--deadline``
  overall) at 1x16, 32x10 and 4096x128 (a fixed sequence length of a model replaces the one asked for):
  ``rt.run`` on the CPU, ``rt.run`` on the GPU with host arrays in and out (host<->device transfers
  included), and ``rt.run(device_outputs=True)`` on the GPU (outputs left on the device).

Writes ``report.json`` and ``report.md`` into OUT_DIR. Exit status: 0 when every check passed, 1 when one
failed (the report says which), 2 with one line ``no GPU provider: ...`` when there is none.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import embed_runtime
from embed_runtime import Runtime
from embed_runtime.bench import parse_shape
from embed_runtime.errors import first_line
from embed_runtime.providers import CPU, PLUGIN_EPS, canonical_name
from embed_runtime.timing import Stats, format_time, markdown_table, measure

MODELS = Path(__file__).resolve().parents[1] / "models"
ATOL = 1e-5
"""The tolerance of the CPU golden suite (``tests/runtime/test_golden.py``), absolute, rtol 0."""
SHAPES = ((1, 16), (32, 10), (4096, 128))
BUILTIN_GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_RUN, GPU_RUN, GPU_DEVICE = "cpu rt.run", "gpu rt.run", "gpu rt.run(device_outputs=True)"
Feeds = dict[str, np.ndarray]


def plugin_rows() -> list[dict[str, Any]]:
    """One line per :data:`PLUGIN_EPS` row: what the table says and whether its package is installed."""
    return [
        {
            "provider": row.provider,
            "package": row.module,
            "registration_name": row.registration_name,
            "library_path": f"{row.module}.{row.library_path}()",
            "ep_name": canonical_name(row.provider),
            "device_filter": row.device_filter is not None,
            "installed": importlib.util.find_spec(row.module) is not None,
        }
        for row in PLUGIN_EPS
    ]


def gpu_providers() -> list[str]:
    """Real names of the GPU providers this machine offers: installed plugin rows, then CUDA/TensorRT."""
    available = embed_runtime.available_providers()
    plugins = [r["ep_name"] for r in plugin_rows() if r["installed"]]
    return [p for p in (*plugins, *BUILTIN_GPU) if p in available]


def ep_devices() -> list[dict[str, str]]:
    """onnxruntime's ``OrtEpDevice`` list, as text (after the plugins are registered by a load)."""
    try:
        devices = ort.get_ep_devices()
    except AttributeError:  # onnxruntime older than the plugin EP API
        return []
    return [
        {
            "ep_name": str(d.ep_name),
            "ep_vendor": str(d.ep_vendor),
            "hardware": str(d.device.type),
            "vendor": str(d.device.vendor),
        }
        for d in devices
    ]


def golden(folder: Path) -> tuple[Feeds, Feeds]:
    """Inputs and expected outputs of a reference model, read as the CPU golden suite reads them."""
    with np.load(folder / "golden.npz") as data:
        inputs = {k.removeprefix("input."): data[k] for k in data.files if k.startswith("input.")}
        outputs = {k.removeprefix("output."): data[k] for k in data.files if k.startswith("output.")}
    return inputs, outputs


def compare(got: Mapping[str, np.ndarray], want: Feeds) -> dict[str, dict[str, Any]]:
    """Per output: shape, then masks equal (bool outputs) or max |got - want| within :data:`ATOL`."""
    result: dict[str, dict[str, Any]] = {}
    for name, expected in want.items():
        value = np.asarray(got[name])
        row: dict[str, Any] = {"shape": list(value.shape), "shape_ok": value.shape == expected.shape}
        if not row["shape_ok"]:
            row["ok"] = False
        elif expected.dtype == np.bool_:
            row["masks_equal"] = row["ok"] = bool(np.array_equal(value, expected))
        else:
            row["max_abs_diff"] = float(np.max(np.abs(value - expected), initial=0.0))
            row["ok"] = row["max_abs_diff"] <= ATOL
        result[name] = row
    return result


def dlpack_probe(value: Any) -> str:
    """Whether an output ``OrtValue`` hands out its memory through DLPack without a copy."""
    try:
        device = value.__dlpack_device__()
        shared = ort.OrtValue.from_dlpack(value).data_ptr() == value.data_ptr()
    except Exception as exc:  # onnxruntime refuses DLPack for WebGPU buffers: a fact to report
        return f"not available: {first_line(exc)}"
    return f"device {tuple(device)}, {'zero-copy' if shared else 'COPIED'}"


def device_check(rt: Runtime, feeds: Any, want: Feeds) -> dict[str, Any]:
    """``rt.run(feeds, device_outputs=True)``: where the outputs stayed, DLPack, parity read back."""
    values = rt.run(feeds, device_outputs=True)
    parity = compare(values.to_numpy(), want)
    first = next(iter(values.values()))
    return {
        "bound_to": values.device,
        "devices": sorted({str(v.device_name()) for v in values.values()}),
        "dlpack": dlpack_probe(first),
        "outputs": parity,
        "ok": all(r["ok"] for r in parity.values()),
    }


def parity(folder: Path, provider: str) -> dict[str, Any]:
    """The parity record of one model on one provider (errors are recorded, not raised)."""
    record: dict[str, Any] = {"model": folder.name, "provider": provider}
    start = time.perf_counter()
    try:
        rt = embed_runtime.load(folder / "model.onnx", providers=[provider])
        record["session_providers"] = rt.providers
        record["on_provider"] = rt.providers[0] == provider
        inputs, want = golden(folder)
        feeds = inputs if len(inputs) > 1 else next(iter(inputs.values()))
        record["outputs"] = compare(rt.run(feeds), want)
        record["outputs_again"] = compare(rt.run(feeds), want)
        record["device_outputs"] = device_check(rt, feeds, want)
    except Exception as exc:  # any failure on the provider is a finding of the check
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["seconds"] = time.perf_counter() - start
    checks = [record.get("on_provider", False), "error" not in record]
    checks += [r["ok"] for key in ("outputs", "outputs_again") for r in record.get(key, {}).values()]
    checks.append(record.get("device_outputs", {}).get("ok", False))
    record["ok"] = all(checks)
    return record


def random_feeds(rt: Runtime, batch: int, seq: int, rng: np.random.Generator) -> Feeds:
    """Valid random ids of shape ``(batch, seq)`` per input (a fixed sequence length wins)."""
    return {
        i.name: rng.integers(1, max(2, i.input_dim or 2), size=(batch, i.input_length or seq), dtype=i.dtype)
        for i in rt.inputs
    }


def timings(
    folder: Path, provider: str, shapes: Sequence[tuple[int, int]], budget: float, left: Callable[[], float]
) -> Iterator[dict[str, Any]]:
    """One record per shape: CPU vs GPU medians, or why it was not timed (``left()`` seconds <= 0,
    or an error)."""
    path = folder / "model.onnx"
    rng = np.random.default_rng(0)
    runtimes: tuple[Runtime, Runtime] | None = None
    for batch, seq in shapes:
        record: dict[str, Any] = {"model": folder.name, "provider": provider, "shape": f"{batch}x{seq}"}
        try:
            if left() <= 0:
                raise TimeoutError("time budget (--deadline) spent")
            if runtimes is None:
                runtimes = (
                    embed_runtime.load(path, providers=[CPU]),
                    embed_runtime.load(path, providers=[provider]),
                )
            feeds = random_feeds(runtimes[0], batch, seq, rng)
            record["input_shapes"] = {n: list(a.shape) for n, a in feeds.items()}
            stats = measure(contenders(*runtimes, feeds), budget=budget, rounds=3, min_samples=3, warmup=0.02)
        except Exception as exc:  # recorded: the other shapes and models are still timed
            record["skipped"] = first_line(exc)
            yield record
            continue
        record["stats"] = {name: _stats(s) for name, s in stats.items()}
        record["cpu_over_gpu"] = stats[CPU_RUN].median / stats[GPU_RUN].median
        yield record


def contenders(cpu: Runtime, gpu: Runtime, feeds: Feeds) -> dict[str, Callable[[], object]]:
    """The three timed calls on the same ids."""
    return {
        CPU_RUN: lambda: cpu.run(feeds),
        GPU_RUN: lambda: gpu.run(feeds),
        GPU_DEVICE: lambda: gpu.run(feeds, device_outputs=True),
    }


def _stats(s: Stats) -> dict[str, float | int]:
    return {"median_s": s.median, "min_s": s.min, "max_s": s.max, "calls": s.calls}


def failures(report: Mapping[str, Any]) -> list[str]:
    """One line per failed check."""
    lines = []
    for r in report["parity"]:
        if not r["ok"]:
            why = r.get("error") or (
                f"runs on {r.get('session_providers')}" if not r.get("on_provider") else "outputs differ"
            )
            lines.append(f"{r['model']} on {r['provider']}: {why}")
    lines += [
        f"{t['model']} {t['shape']} on {t['provider']}: not timed: {t['skipped']}"
        for t in report["timings"]
        if "skipped" in t
    ]
    return lines


def _diff_cell(outputs: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for name, row in outputs.items():
        if "max_abs_diff" in row:
            parts.append(f"{name} {row['max_abs_diff']:.1e}")
        else:
            parts.append(f"{name} {'equal' if row.get('masks_equal') else 'DIFFERENT'}")
    return ", ".join(parts)


def _shape_cell(t: Mapping[str, Any]) -> str:
    ran = {"x".join(map(str, shape)) for shape in t["input_shapes"].values()}
    return t["shape"] if ran == {t["shape"]} else f"{t['shape']} ({', '.join(sorted(ran))})"


def markdown(report: Mapping[str, Any]) -> str:
    """The Markdown report: status, environment, plugin table, parity, timings."""
    env = report["environment"]
    status = "PASS" if report["ok"] else "FAIL"
    mode = " (dry run: the CPU provider stands in for the GPU)" if report["dry_run"] else ""
    lines = [
        f"# GPU check: {status}{mode}",
        "",
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}, Python {env['python']}, {env['platform']}; "
        f"providers checked: {', '.join(report['providers_checked'])}; {report['seconds']:.1f} s in all.",
        "",
        "## Plugin execution providers (`embed_runtime.providers.PLUGIN_EPS`)",
        "",
        markdown_table(
            ["provider", "package", "library path", "EP name", "device filter", "installed"],
            [
                [
                    r["provider"],
                    r["package"],
                    r["library_path"],
                    r["ep_name"],
                    str(r["device_filter"]),
                    str(r["installed"]),
                ]
                for r in report["plugin_eps"]
            ],
        ),
        "",
        f"## Parity with the golden files (atol {ATOL:g}, masks equal)",
        "",
    ]
    rows = []
    for r in report["parity"]:
        dev = r.get("device_outputs", {})
        rows.append(
            [
                r["model"],
                ", ".join(r.get("session_providers", [])),
                _diff_cell(r.get("outputs", {})),
                f"{dev.get('bound_to', '-')} {'ok' if dev.get('ok') else 'FAIL'}; DLPack {dev.get('dlpack', '-')}",
                "ok" if r["ok"] else f"FAIL {r.get('error', '')}",
            ]
        )
    lines += [
        markdown_table(["model", "session providers", "max diff", "device outputs", "result"], rows),
        "",
    ]
    lines += [
        "## Timings",
        "",
        f"Median per call. `{GPU_RUN}`: host ids in, host arrays out (both transfers included). "
        f"`{GPU_DEVICE}`: host ids in, outputs left on the device. Shapes in parentheses are the ones run "
        "where a model fixes the sequence length.",
        "",
    ]
    rows = []
    for t in report["timings"]:
        if "skipped" in t:
            rows.append([t["model"], t["shape"], "-", "-", "-", f"not timed: {t['skipped']}"])
            continue
        s = t["stats"]
        rows.append(
            [
                t["model"],
                _shape_cell(t),
                *(format_time(s[n]["median_s"]) for n in (CPU_RUN, GPU_RUN, GPU_DEVICE)),
                f"{t['cpu_over_gpu']:.3g}",
            ]
        )
    lines.append(markdown_table(["model", "shape", CPU_RUN, GPU_RUN, GPU_DEVICE, "cpu / gpu"], rows))
    if report["failures"]:
        lines += ["", "## Failures", "", *(f"- {f}" for f in report["failures"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for report.json and report.md (created)")
    parser.add_argument("--dry-run-cpu", action="store_true", help="run every step with the CPU standing in")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=list(SHAPES), metavar="BxS")
    parser.add_argument("--budget", type=float, default=0.2, help="timing seconds per contender (0.2)")
    parser.add_argument("--deadline", type=float, default=120.0, help="no new timing after this many s (120)")
    parser.add_argument(
        "--models", type=Path, default=MODELS, help="folder of <name>/model.onnx + golden.npz"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    providers = [CPU] if args.dry_run_cpu else gpu_providers()
    if not providers:
        wanted = [
            f"{r['ep_name']} ({r['package']} not installed)" for r in plugin_rows() if not r["installed"]
        ]
        print(
            f"no GPU provider: none of {', '.join([*wanted, *BUILTIN_GPU])} is available in onnxruntime "
            f"{ort.__version__} (available: {', '.join(embed_runtime.available_providers())}); "
            "--dry-run-cpu runs the check with the CPU standing in",
            file=sys.stderr,
        )
        return 2
    folders = sorted(
        p.parent for p in args.models.glob("*/model.onnx") if (p.parent / "golden.npz").is_file()
    )
    checked = [parity(folder, p) for p in providers for folder in folders]

    def left() -> float:
        return args.deadline - (time.perf_counter() - start)

    timed = [
        t for p in providers for folder in folders for t in timings(folder, p, args.shapes, args.budget, left)
    ]
    report: dict[str, Any] = {
        "dry_run": args.dry_run_cpu,
        "providers_checked": providers,
        "tolerance": {"atol": ATOL, "rtol": 0.0, "masks": "equal"},
        "environment": {
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "available_providers": embed_runtime.available_providers(),
            "ep_devices": ep_devices(),
        },
        "plugin_eps": plugin_rows(),
        "parity": checked,
        "timings": timed,
    }
    report["failures"] = failures(report)
    report["ok"] = not report["failures"]
    report["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    for line in report["failures"]:
        print(f"FAIL {line}", file=sys.stderr)
    print(
        f"GPU check {'passed' if report['ok'] else 'FAILED'} on {', '.join(providers)} in "
        f"{report['seconds']:.1f} s; reports in {args.out}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
