"""A live server for the reliability tests, and its resident memory (psutil)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from tests.serve.helpers import RawHttp

MODELS = ("seed", "classifier", "recurrent", "tagger", "recommender")
"""The committed models every reliability server serves (``models/<name>/model.onnx``)."""

MiB = 2**20


class PeakRss:
    """The peak resident memory of a process while the ``with`` block runs, sampled every millisecond."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.before = self.peak = self.after = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.after = self.process.memory_info().rss
        self.peak = max(self.peak, self.after)

    @property
    def growth_mib(self) -> float:
        """Peak minus the memory at the start, in MiB."""
        return (self.peak - self.before) / MiB


class LiveServer:
    """A server subprocess: its process, a raw HTTP client and where it logs."""

    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc = proc
        self.http = RawHttp(url)
        self.log = log

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        import psutil

        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def peak(self) -> PeakRss:
        """A ``with`` block's peak resident memory."""
        return PeakRss(self.proc.pid)
