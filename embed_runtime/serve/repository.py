"""A model repository laid out like Triton's: ``DIR/<name>/<version>/model.onnx``, versions being
positive integers; and the served models by name and version (:class:`ServedModels`).

Every version found on disk is served (Triton's ``all`` version policy); a request without a version gets
the highest. The V2 repository extension loads a model again (new versions on disk are loaded and warmed
up, versions gone from disk are dropped, loaded ones are kept) or unloads it. Either publishes a new
mapping in one assignment: requests already holding a model finish on it, probes and lookups never wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from embed_runtime import ConfigurationError, Runtime
from embed_runtime.serve.limits import Limits
from embed_runtime.serve.protocol import ProtocolError
from embed_runtime.serve.served import ServedModel, UnknownModelError

MODEL_FILE = "model.onnx"

Versions = Mapping[str, ServedModel]
"""Version to served model, of one name."""


def _version_key(version: str) -> int:
    return int(version)


class ModelRepository:
    """The models of a directory ``root/<name>/<version>/model.onnx``, loaded with ``loader``."""

    def __init__(self, root: Path, loader: Callable[[Path], Runtime]) -> None:
        if not root.is_dir():
            raise ConfigurationError(f"model repository {root} is not a directory")
        self.root = root
        self.loader = loader

    def names(self) -> list[str]:
        """The names with at least one version on disk, sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> dict[str, Path]:
        """Version to model file of ``name`` on disk (versions are folders named by a positive integer)."""
        folder = self.root / name
        if name in ("", ".", "..") or "/" in name or not folder.is_dir():
            return {}
        found = {
            p.name: p / MODEL_FILE
            for p in folder.iterdir()
            if p.name.isdigit() and int(p.name) > 0 and (p / MODEL_FILE).is_file()
        }
        return dict(sorted(found.items(), key=lambda item: _version_key(item[0])))

    def build(self, name: str, limits: Limits, loaded: Versions) -> dict[str, ServedModel]:
        """The versions of ``name`` to serve: ``loaded`` ones still on disk, the others loaded (not warm)."""
        paths = self.versions(name)
        if not paths:
            raise UnknownModelError(
                f"model repository {self.root} has no model {name!r} (no {self.root}/{name}/<version>/{MODEL_FILE})"
            )
        return {
            version: loaded[version]
            if version in loaded
            else ServedModel(name, self.loader(path), limits, version)
            for version, path in paths.items()
        }


class ServedModels:
    """Name to version to :class:`ServedModel`, replaced as a whole on every change (copy on write), so
    that readers iterate and look up without a lock."""

    def __init__(
        self, models: Mapping[str, Versions], repository: ModelRepository | None, from_paths: set[str]
    ) -> None:
        self.by_name: Mapping[str, Versions] = dict(models)
        self.repository = repository
        self.from_paths = from_paths  # served from a path given to the server, outside the repository
        self._changing = threading.Lock()  # serializes loads and unloads only

    def lookup(self, name: str, version: str | None) -> ServedModel:
        """The model ``name`` at ``version`` (``None`` or empty: the highest); raises
        :class:`UnknownModelError` naming what there is."""
        versions = self.by_name.get(name)
        if not versions:
            raise UnknownModelError(
                f"unknown model {name!r}; this server has: " + ", ".join(sorted(self.by_name))
            )
        if not version:
            return versions[max(versions, key=_version_key)]
        model = versions.get(version)
        if model is None:
            raise UnknownModelError(
                f"model {name!r} has no version {version!r}; it has {', '.join(versions)}"
            )
        return model

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """The V2 metadata of ``name`` at ``version``, listing every served version."""
        model = self.lookup(name, version)
        return {**model.metadata, "versions": list(self.by_name.get(name, {model.version: model}))}

    def all(self) -> list[ServedModel]:
        """Every served model, every version."""
        return [model for versions in self.by_name.values() for model in versions.values()]

    def load(self, name: str, limits: Limits, setup: Callable[[ServedModel], None]) -> None:
        """Load ``name`` from the repository again, ``setup`` and warm up its new versions (as the server
        does its models at start-up), then publish it; in a worker thread. Raises
        :class:`UnknownModelError` when the repository has no such model and
        :class:`~embed_runtime.ConfigurationError` when a new version fails its warm-up."""
        assert self.repository is not None
        self._check_in_repository(name)
        with self._changing:
            versions = self.repository.build(name, limits, self.by_name.get(name, {}))
            for model in versions.values():
                if not model.ready:
                    setup(model)
                    model.warm_up()
                if not model.ready:
                    raise ConfigurationError(
                        f"version {model.version} of model {name!r} failed its warm-up inference (see the "
                        "server log); nothing was changed"
                    )
            self.by_name = {**self.by_name, name: versions}

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (requests already running on it finish)."""
        self._check_in_repository(name)
        with self._changing:
            if name not in self.by_name:
                raise UnknownModelError(f"model {name!r} is not loaded")
            self.by_name = {k: v for k, v in self.by_name.items() if k != name}

    def _check_in_repository(self, name: str) -> None:
        if name in self.from_paths:
            raise ProtocolError(
                f"model {name!r} is served from a path given to the server, not from the model repository; "
                "it cannot be loaded or unloaded"
            )

    def index(self) -> list[dict[str, Any]]:
        """The repository index: every repository model on disk or loaded, each version with its state."""
        names = (set(self.by_name) - self.from_paths) | set(
            self.repository.names() if self.repository else ()
        )
        entries = []
        for name in sorted(names):
            loaded = self.by_name.get(name, {})
            on_disk = self.repository.versions(name) if self.repository else {}
            for version in sorted(set(loaded) | set(on_disk), key=_version_key):
                model = loaded.get(version)
                state = "READY" if model is not None and model.ready else "UNAVAILABLE"
                entry = {"name": name, "version": version, "state": state}
                if model is None:
                    entry["reason"] = "unloaded"
                elif not model.ready:
                    entry["reason"] = "warming up"
                entries.append(entry)
        return entries
