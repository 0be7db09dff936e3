"""deploy/kubernetes, validated offline: every manifest and both kustomize renderings against the
Kubernetes JSON schemas that PyPI's ``kubernetes-validate`` ships (strict: unknown fields fail), the
KServe InferenceService against the schema of KServe v0.20.0's CRD (vendored in ``schemas/``), and
the settings that must agree between files (drain timing, probes, user, read-only mounts, Secret).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize_lite import load_documents, render

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
BASE, GPU = K8S / "base", K8S / "overlays" / "gpu"
KSERVE = K8S / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = Path(__file__).parent / "schemas" / "kserve-v0.20.0-inferenceservice-v1beta1.json.gz"
# The oldest Kubernetes the manifests target and the newest whose schemas the package ships.
VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]
PORT = 8000  # the images' EXPOSE and CMD --port
UID = 10001  # the images' user clce

MANIFESTS = sorted(
    p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and not p.name.endswith("-patch.yaml")
)
KUBERNETES_MANIFESTS = [p for p in MANIFESTS if p != KSERVE]


def _id(path: Path) -> str:
    return str(path.relative_to(K8S))


def _validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _sleep_seconds(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", KUBERNETES_MANIFESTS, ids=_id)
def test_manifest_validates_against_kubernetes_schema(path: Path, version: str) -> None:
    for doc in load_documents(path):
        _validate(doc, version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("folder", [BASE, GPU], ids=_id)
def test_kustomize_rendering_validates(folder: Path, version: str) -> None:
    docs = render(folder)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret"}
    for doc in docs:
        _validate(doc, version)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(_one(render(BASE), "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        _validate(deployment, VERSIONS[-1])


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed"
)
@pytest.mark.parametrize("folder", [BASE, GPU], ids=_id)
def test_rendering_equals_kubectl_kustomize(folder: Path) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True)

    def key(d: dict[str, Any]) -> str:
        return json.dumps(d, sort_keys=True)

    expected = sorted(map(key, (d for d in yaml.safe_load_all(out.stdout) if d)))
    assert sorted(map(key, render(folder))) == expected


def _strict_json_schema(node: Any) -> Any:
    """A CRD's structural OpenAPI v3 schema as JSON Schema, as strict as the API server's field
    validation: objects with ``properties`` accept no other field, unless they preserve unknown
    fields; ``x-kubernetes-int-or-string`` and ``nullable`` become their JSON Schema forms."""
    if isinstance(node, list):
        return [_strict_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict_json_schema(v) for k, v in node.items()}
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "type" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


@pytest.fixture(scope="module")
def kserve_validator() -> Any:
    schema = _strict_json_schema(json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes())))
    return jsonschema.Draft202012Validator(schema)


def test_inferenceservice_validates_against_kserve_crd_schema(kserve_validator: Any) -> None:
    (isvc,) = load_documents(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])  # DNS-1035 label
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator.iter_errors(isvc)
    ]
    assert not errors, errors


def test_kserve_schema_rejects_a_misspelt_field(kserve_validator: Any) -> None:
    (isvc,) = load_documents(KSERVE)
    isvc["spec"]["predictor"]["minReplica"] = isvc["spec"]["predictor"].pop("minReplicas")
    assert any("minReplica" in e.message for e in kserve_validator.iter_errors(isvc))
    (isvc,) = load_documents(KSERVE)
    isvc["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    assert list(kserve_validator.iter_errors(isvc))


# ---------------------------------------------------------------- what must agree


def _pods() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, server container) of the CPU and GPU Deployments and the KServe predictor."""
    out = []
    for folder in (BASE, GPU):
        pod = _one(render(folder), "Deployment")["spec"]["template"]["spec"]
        out.append((_id(folder), pod, pod["containers"][0]))
    (isvc,) = load_documents(KSERVE)
    predictor = isvc["spec"]["predictor"]
    (container,) = [c for c in predictor["containers"] if c["name"] == "kserve-container"]
    out.append(("kserve", predictor, container))
    return out


PODS = _pods()


@pytest.mark.parametrize(("where", "pod", "container"), PODS, ids=[p[0] for p in PODS])
def test_grace_period_covers_prestop_and_drain(where: str, pod: dict, container: dict) -> None:
    drain = int(_env(container)["CLCE_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > _sleep_seconds(container) + drain


@pytest.mark.parametrize(("where", "pod", "container"), PODS, ids=[p[0] for p in PODS])
def test_probes_and_port(where: str, pod: dict, container: dict) -> None:
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    names = {p.get("name") for p in container["ports"]}
    for probe, path in (
        ("startupProbe", "/health/live"),
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] == PORT or get["port"] in names, probe


@pytest.mark.parametrize(("where", "pod", "container"), PODS, ids=[p[0] for p in PODS])
def test_non_root_read_only_and_writable_paths(where: str, pod: dict, container: dict) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for writable in ("/tmp", "/data"):  # upload spill files; the SQLite default
        assert "emptyDir" in volumes[mounts[writable]["name"]], writable
    model_dir = _env(container)["CLCE_MODEL_DIR"]
    if where == "kserve":  # the storage initializer mounts STORAGE_URI there, read-only
        assert model_dir == "/mnt/models" and _env(container)["STORAGE_URI"].startswith("pvc://")
    else:
        mount = mounts[model_dir]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["persistentVolumeClaim"]["readOnly"] is True


def test_images_run_as_the_uid_and_port_the_manifests_assume() -> None:
    for dockerfile in (REPO / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"):
        text = dockerfile.read_text()
        assert f"--uid {UID} " in text and f"EXPOSE {PORT}" in text and f'"--port", "{PORT}"' in text


@pytest.mark.parametrize(("where", "pod", "container"), PODS, ids=[p[0] for p in PODS])
def test_env_names_are_server_settings(where: str, pod: dict, container: dict) -> None:
    from serving.settings import Settings

    known = {f"CLCE_{name.upper()}" for name in Settings.model_fields}
    names = {e["name"] for e in container["env"] if e["name"].startswith("CLCE_")}
    secret = _one(render(BASE), "Secret")
    names |= set(secret["stringData"])
    assert names <= known, sorted(names - known)
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [secret["metadata"]["name"]]


def test_kserve_container_matches_the_deployment() -> None:
    (_, _, deployment), _, (_, _, kserve) = PODS
    for field in ("resources", "securityContext", "lifecycle", "envFrom"):
        assert kserve[field] == deployment[field], field
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        ours = {**deployment[probe], "httpGet": {**deployment[probe]["httpGet"], "port": PORT}}
        assert kserve[probe] == ours, probe
    same = {k: v for k, v in _env(deployment).items() if k != "CLCE_MODEL_DIR"}
    assert {k: _env(kserve)[k] for k in same} == same


def test_gpu_overlay_requests_one_gpu_and_runs_the_gpu_image() -> None:
    container = _one(render(GPU), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(container)["CLCE_DEVICE"] == "cuda"
    assert container["image"].rsplit(":", 1)[0].endswith("/clce-serve")
    base = _one(render(BASE), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in base["resources"]["limits"]
    assert base["image"].rsplit(":", 1)[0].endswith("/clce-serve-cpu")


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    docs = render(BASE)
    deployment = _one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = [d for d in docs if d["kind"] == "Service" and d["spec"]["type"] != "ExternalName"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = _one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # a model update never lowers serving capacity


def test_database_url_names_the_external_postgres_service() -> None:
    docs = render(BASE)
    url = _one(docs, "Secret")["stringData"]["CLCE_DB_URL"]
    match = re.fullmatch(r"postgresql://[^:@/]+:[^@/]+@([^:/]+):(\d+)/\w+", url)
    assert match, url
    (postgres,) = [d for d in docs if d["kind"] == "Service" and d["spec"]["type"] == "ExternalName"]
    assert match.group(1) == postgres["metadata"]["name"]
    assert int(match.group(2)) == postgres["spec"]["ports"][0]["port"]
