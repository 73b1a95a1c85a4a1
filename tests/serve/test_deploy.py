"""The manifests in ``docs/deploy/``: their commands parse with the real ``serve`` options, their ports and
probes point at what that command serves."""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio
import pytest

from embed_runtime.cli import LAZY_COMMANDS
from embed_runtime.serve import add_arguments, create_app, model_specs
from embed_runtime.serve.workers import check_workers

from .test_cli import _get

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"


def _load(name: str) -> dict[str, dict[str, Any]]:
    """The documents of ``docs/deploy/<name>``, by kind (one of each)."""
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    kinds = {doc["kind"]: doc for doc in docs}
    assert len(kinds) == len(docs)
    return kinds


def _serve_args(container: dict[str, Any], substitutions: dict[str, str] | None = None) -> argparse.Namespace:
    """The container's ``embed-runtime serve`` arguments, parsed by the real option parser."""
    assert container["command"] == ["embed-runtime", "serve"]
    (script,) = entry_points(group="console_scripts", name="embed-runtime")
    assert script.value == "embed_runtime.cli:main" and LAZY_COMMANDS["serve"][0] == "embed_runtime.serve"
    args = list(container["args"])
    for old, new in (substitutions or {}).items():
        args = [arg.replace(old, new) for arg in args]
    parser = argparse.ArgumentParser(prog="embed-runtime serve")
    add_arguments(parser)
    parsed = parser.parse_args(args)
    assert parsed.host == "0.0.0.0", "a server in a pod must listen beyond loopback"
    return parsed


def _check_probes(container: dict[str, Any], http_port: int) -> None:
    """Every probe is an HTTP GET on the server's port, at a path the app answers with 200."""
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    app = create_app({})
    probes = {k: v for k, v in container.items() if k.endswith("Probe")}
    assert {"livenessProbe", "readinessProbe"} <= set(probes)
    for kind, probe in probes.items():
        port = probe["httpGet"]["port"]
        assert ports.get(port, port) == http_port, kind
        assert anyio.run(_get, app, probe["httpGet"]["path"])[0] == 200, kind
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_kubernetes_deployment_and_service() -> None:
    kinds = _load("kubernetes.yaml")
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = _serve_args(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.port, "grpc": args.grpc_port}
    _check_probes(container, args.port)

    (mount,) = container["volumeMounts"]
    for name, path in model_specs(args.models).items():
        assert name == "seed" and path.is_relative_to(mount["mountPath"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.graceful_timeout
    check_workers(args.workers, args.model_repository is not None)
    assert int(container["resources"]["requests"]["cpu"]) >= args.workers  # a CPU for each worker

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.port
    assert anyio.run(_get, create_app({}), annotations["prometheus.io/path"])[0] == 200


def test_kserve_serving_runtime_and_inference_service() -> None:
    kinds = _load("kserve.yaml")
    runtime, isvc = kinds["ServingRuntime"], kinds["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}

    (container,) = runtime["spec"]["containers"]
    name = isvc["metadata"]["name"]
    args = _serve_args(container, {"{{.Name}}": name})
    # KServe's storage initializer puts the storageUri's files in /mnt/models
    assert model_specs(args.models) == {name: Path("/mnt/models/model.onnx")}
    assert [p["containerPort"] for p in container["ports"]] == [args.port]
    _check_probes(container, args.port)
    assert int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"]) == args.port
