"""The exporter under faults: killed mid-export, two exports at once, destinations it cannot write, the
files it leaves (old data and stale staging of the same model removed, modes from the umask).

SIGKILL tests: each export runs in a subprocess (:data:`CHILD`) that builds ``Embedding(ROWS, WIDTH)``
with the table ``np.random.default_rng(seed)`` gives, and exports it with a tiny
``external_data_threshold`` so the table goes to an external data file. The child kills itself at one
point of the export by replacing, in its own process only, the function that runs at that point (the
exporter has no test hook). Afterwards ``embed_runtime.load`` on the path must give the old model's table
exactly, the new one's exactly, or raise ``ModelLoadError``: never other rows.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import embed_runtime
from embed_runtime import ModelLoadError

pytestmark = [
    pytest.mark.tf,
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs the export extra"),
]

ROWS, WIDTH = 3000, 8  # 96,000 bytes: more than the 64 KiB the load-time sample reads
OLD, NEW, OTHER = 1, 2, 3  # table seeds
ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, signal, sys, time
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
from exporters import export_keras, large, writers

path, seed, point, threshold = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows, width = int(sys.argv[5]), int(sys.argv[6])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "writing data":  # after a few chunks of the table reached the staged data file
    real_rows = large.iter_rows
    def iter_rows(table, dtype, chunk_bytes=0):
        for i, chunk in enumerate(real_rows(table, dtype, chunk_bytes=4096)):
            if i == 3:
                die()
            yield chunk
    large.iter_rows = iter_rows
elif point == "before the .onnx rename":  # data file already in place (when there is one)
    real_replace = os.replace
    def replace(source, target):
        if os.fspath(target) == path:
            die()
        real_replace(source, target)
    os.replace = replace
elif point == "before the clean-up":  # new .onnx in place, old data file not removed yet
    writers.remove_old_data = die
elif point == "together":  # wait at the commit for the other export, then rename slowly
    real_commit, real_replace = writers.Staging.commit, os.replace
    def commit(self):
        Path(f"{path}.ready.{seed}").touch()
        while not Path(f"{path}.go").exists():
            time.sleep(0.01)
        return real_commit(self)
    def replace(source, target):
        time.sleep(0.3)
        real_replace(source, target)
    writers.Staging.commit, os.replace = commit, replace
elif point != "none":
    raise SystemExit(f"unknown point {point}")

model = keras.Sequential([keras.Input((None,), dtype="int64"), keras.layers.Embedding(rows, width)])
model.layers[0].embeddings.assign(np.random.default_rng(seed).standard_normal((rows, width)).astype("float32"))
export_keras(model, path, external_data_threshold=threshold)
"""


def start(path: Path, seed: int, point: str, threshold: str = "1KiB") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = [sys.executable, "-c", CHILD, str(path), str(seed), point, threshold, str(ROWS), str(WIDTH)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str], killed: bool) -> None:
    _, err = child.communicate(timeout=180)
    want = -signal.SIGKILL if killed else 0
    assert child.returncode == want, f"exit {child.returncode}, wanted {want}:\n{err[-3000:]}"


def export(path: Path, seed: int, point: str = "none", threshold: str = "1KiB") -> None:
    finish(start(path, seed, point, threshold), killed=point != "none")


def table(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, WIDTH)).astype(np.float32)


def loaded_seed(path: Path) -> int | None:
    """Which model the path loads as (by its whole table), None when the load is refused; fails on
    anything else."""
    try:
        rt = embed_runtime.load(path, providers="cpu")
    except ModelLoadError:
        return None
    rows = rt.run(np.arange(ROWS)[None, :])["embedding"][0]
    for seed in (OLD, NEW, OTHER):
        if np.array_equal(rows, table(seed)):
            return seed
    raise AssertionError(f"{path} loads without error but its rows are no exported table")


def data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("m.onnx*.data"))


@pytest.fixture(scope="module")
def old_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the OLD model (external data), exported once and copied by each test."""
    folder = tmp_path_factory.mktemp("old")
    export(folder / "m.onnx", OLD)
    assert loaded_seed(folder / "m.onnx") == OLD
    return folder


@pytest.mark.parametrize(
    ("over_old", "point", "threshold", "expected"),
    [
        (False, "writing data", "1KiB", None),
        (True, "writing data", "1KiB", OLD),
        (True, "before the .onnx rename", "1KiB", OLD),  # failed before: old .onnx + new data, other rows
        (True, "before the .onnx rename", "off", OLD),  # an inline export replacing a pair
        (True, "before the clean-up", "1KiB", NEW),
        (True, "none", "1KiB", NEW),
    ],
)
def test_a_killed_export_leaves_the_old_model_or_the_new_one(
    old_model: Path, tmp_path: Path, over_old: bool, point: str, threshold: str, expected: int | None
) -> None:
    folder = tmp_path / "models"
    if over_old:
        shutil.copytree(old_model, folder)
    path = folder / "m.onnx"
    export(path, NEW, point, threshold)
    assert loaded_seed(path) == expected
    if expected is None:  # nothing visible: only the hidden staging folder a later export removes
        assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    if point == "before the clean-up":  # the old data file is left; the next export removes it
        assert len(data_files(folder)) == 2
        export(path, OTHER)
        assert loaded_seed(path) == OTHER
    if point in ("before the clean-up", "none"):
        assert len(data_files(folder)) == 1


def test_two_exports_to_one_path_at_once_leave_one_whole_model(old_model: Path, tmp_path: Path) -> None:
    """Both reach their renames together (a barrier in the children) and rename slowly; the folder lock
    keeps one export's renames and clean-up from interleaving with the other's."""
    folder = tmp_path / "models"
    shutil.copytree(old_model, folder)
    path = folder / "m.onnx"
    children = [start(path, seed, "together") for seed in (NEW, OTHER)]
    deadline = time.monotonic() + 150
    while not all(Path(f"{path}.ready.{seed}").exists() for seed in (NEW, OTHER)):
        assert time.monotonic() < deadline and all(c.poll() is None for c in children), "a child failed"
        time.sleep(0.05)
    Path(f"{path}.go").touch()
    for child in children:
        finish(child, killed=False)
    assert loaded_seed(path) in (NEW, OTHER)
    assert len(data_files(folder)) == 1


# --- destinations the exporter cannot write: an ExportError naming the path, never a raw OSError


@pytest.fixture(scope="module")
def model():
    import keras

    return keras.Sequential([keras.Input((None,), dtype="int64"), keras.layers.Embedding(3000, 8)])


THRESHOLDS = pytest.mark.parametrize("threshold", ["off", "1KiB"], ids=["inline", "external"])


@THRESHOLDS
def test_a_folder_as_destination(model, tmp_path: Path, threshold: str) -> None:
    from exporters import ExportError, export_keras

    with pytest.raises(ExportError, match=f"destination {re.escape(str(tmp_path))} is a folder"):
        export_keras(model, tmp_path, external_data_threshold=threshold)
    assert list(tmp_path.iterdir()) == []


@THRESHOLDS
@pytest.mark.parametrize("under", ["file/m.onnx", "file/a/b/m.onnx"])
def test_a_destination_under_a_file(model, tmp_path: Path, threshold: str, under: str) -> None:
    from exporters import ExportError, export_keras

    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ExportError, match=f"{re.escape(str(tmp_path / 'file'))} is a file, not a folder"):
        export_keras(model, tmp_path / under, external_data_threshold=threshold)
    assert (tmp_path / "file").read_bytes() == b"x"


@THRESHOLDS
@pytest.mark.parametrize("folder", ["/sys/kernel", "/proc/self"])
def test_a_folder_where_even_root_cannot_create_files(model, threshold: str, folder: str) -> None:
    """sysfs and procfs refuse new files to every user, root included. (As root, os.access calls /sys
    writable, so there the writers' own OSError is turned into the ExportError.)"""
    from exporters import ExportError, export_keras

    if not Path(folder).is_dir():
        pytest.skip(f"needs Linux's {folder}")
    with pytest.raises(ExportError, match=f"cannot write {folder}/m\\.onnx: "):
        export_keras(model, f"{folder}/m.onnx", external_data_threshold=threshold)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write any folder")
def test_a_read_only_folder(model, tmp_path: Path) -> None:
    from exporters import ExportError, export_keras

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ExportError, match=f"folder {re.escape(str(folder))} is not writable"):
            export_keras(model, folder / "m.onnx")
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    ("output", "words"),
    [(".", "is a folder"), ("file/m.onnx", "is a file, not a folder"), ("/proc/self/m.onnx", "not writable")],
)
def test_cli_says_what_is_wrong_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str, words: str
) -> None:
    from exporters.cli import main

    if output.startswith("/proc") and os.access("/proc/self", os.W_OK):
        pytest.skip("this /proc/self says it is writable")
    (tmp_path / "file").write_bytes(b"x")
    model = tmp_path / "m.keras"
    model.write_bytes(b"never read: the destination is checked first")
    assert main([str(model), "-o", str(tmp_path / output)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("embed-export: error: ") and words in err


# --- the files an export leaves: old data and stale staging of this model removed, modes from the umask


def test_reexport_removes_this_models_old_data_and_stale_staging_only(model, tmp_path: Path) -> None:
    """Old data files of m.onnx go once the new .onnx is in place; staging leftovers of killed exports of
    m.onnx go when nothing wrote to them for an hour; nothing else is touched."""
    from exporters import export_keras, writers

    hour_ago = time.time() - writers.STALE_SECONDS - 60

    def make(name: str, folder: bool = False, old: bool = False, fresh_child: bool = False) -> None:
        entry = tmp_path / name
        if folder:
            entry.mkdir()
            (entry / "m.onnx.data").write_bytes(b"x")
            if old:
                os.utime(entry / "m.onnx.data", (hour_ago, hour_ago))
            if fresh_child:
                (entry / "m.onnx").write_bytes(b"still being written")
        else:
            entry.write_bytes(b"x")
        if old:
            os.utime(entry, (hour_ago, hour_ago))

    gone = ["m.onnx.data", "m.onnx.0123456789abcdef.data", ".m.onnx.abcd1234.tmp", ".m.onnx.k2j4h5g6.tmp"]
    make("m.onnx.data")  # the name exports used before content names
    make("m.onnx.0123456789abcdef.data")
    make(".m.onnx.abcd1234.tmp", folder=True, old=True)
    make(".m.onnx.k2j4h5g6.tmp", old=True)
    kept = [
        ".m.onnx.fresh123.tmp",  # a running export's staging folder
        ".m.onnx.busy1234.tmp",  # an hour old, but a file in it was just written
        ".other.onnx.abcd1234.tmp",
        ".m.onnx.x.onnx.abcd1234.tmp",
        "m.onnx.data.bak",
        "mm.onnx.0123456789abcdef.data",
        "m.onnx.0123456789ABCDEF.data",
        "other.onnx.data",
    ]
    make(kept[0], folder=True)
    make(kept[1], folder=True, old=True, fresh_child=True)
    for name in kept[2:4]:
        make(name, folder=True, old=True)
    for name in kept[4:]:
        make(name, old=True)
    report = export_keras(model, tmp_path / "m.onnx", external_data_threshold="1KiB")
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert listing == sorted([*kept, "m.onnx", report.external_data.name])
    assert not set(gone) & set(listing)
    export_keras(model, tmp_path / "m.onnx", external_data_threshold="off")  # inline: no data file left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "m.onnx"])


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_files_get_the_mode_the_umask_gives(model, tmp_path: Path, umask: int) -> None:
    from exporters import export_keras

    inline, big = tmp_path / "inline.onnx", tmp_path / "big.onnx"
    inline.write_bytes(b"an earlier file")
    inline.chmod(0o644)
    previous = os.umask(umask)
    try:
        export_keras(model, inline, external_data_threshold="off")
        report = export_keras(model, big, external_data_threshold="1KiB")
    finally:
        os.umask(previous)
    for path in (inline, big, report.external_data):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
