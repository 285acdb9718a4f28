"""The Kubernetes manifests, rendered and checked offline: schemas of the built-in kinds, the
RayCluster's structure, hardening, probes, images, settings, Secrets and NetworkPolicies.

Renders with the kubectl on PATH (or $KUBECTL), kustomize >= v4: the overlays use `resources`
and `patches`, none of the deprecated fields.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib

import kubernetes_validate
import pytest

from i2x.config import SERVICE_PORTS, SERVICES, SETTINGS
from k8s_manifests import (i2x_config, K8S, NAMESPACES, OVERLAYS, REPO, Endpoint, allowed, by_kind, containers,
                           kubectl, pod_templates, render, resolved_env)

pytestmark = pytest.mark.skipif(kubectl() is None,
                                reason="kubectl with kustomize >= v4 is missing (Debian 12's kubectl 1.20 is too old)")

# Oldest Kubernetes the manifests target (native gRPC probes are GA in 1.27) and a recent one;
# kubernetes-validate ships both schema sets offline.
K8S_VERSIONS = ("1.27.0", "1.30.0")
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "client/i2x/client/_version.py").read_text()).group(1)
OUR_IMAGES = {"services", "services-cuda", "ray-worker", "ray-worker-gpu"}

# Settings a service may leave unset because the default is right there, and why.
OMITTABLE = {
    "dev": {
        "I2X_TLS_CERT": "dev serves plaintext: clients reach it through kubectl port-forward, grpcurl -plaintext",
        "I2X_TLS_KEY": "dev serves plaintext (see I2X_TLS_CERT)",
    },
    "prod": {},
}
# What the Ray pods need to read and write artifacts themselves.
RAY_SETTINGS = ("I2X_STORE", "I2X_S3_ENDPOINT", "I2X_S3_SECURE", "I2X_S3_ACCESS_KEY", "I2X_S3_SECRET_KEY")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


def service_deployments(docs):
    deployments = by_kind(docs, "Deployment")
    return {svc: deployments[f"i2x-{svc}"] for svc in SERVICES}


def the_raycluster(docs):
    clusters = by_kind(docs, "RayCluster")
    assert len(clusters) == 1, f"expected one RayCluster, got {sorted(clusters)}"
    return next(iter(clusters.values()))


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_built_in_kinds_validate_against_the_kubernetes_schemas(overlay, k8s_version):
    name, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "NetworkPolicy", "RayCluster"} <= kinds
    for doc in docs:
        assert doc["metadata"].get("namespace", NAMESPACES[name]) == NAMESPACES[name]
        if doc["apiVersion"].startswith("ray.io/"):
            continue  # a CRD: test_raycluster_structure
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} at {path}: {error.message}")


def test_every_component_renders_on_its_own():
    for part in ("base", "components/raycluster", "components/minio"):
        assert render(K8S / part), part


def test_raycluster_structure(overlay):
    """The fields KubeRay v1 requires, and the wiring to the services' I2X_RAY_ADDRESS."""
    name, docs = overlay
    cluster = the_raycluster(docs)
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == importlib.metadata.version("ray"), "rayVersion must be the pinned Ray"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_container = head["template"]["spec"]["containers"][0]
    head_ports = {p["containerPort"] for p in head_container["ports"]}
    assert {6379, 8265, 10001} <= head_ports, "the head must declare GCS, dashboard and client ports"
    assert spec["workerGroupSpecs"], "a worker group is required"
    for group in spec["workerGroupSpecs"]:
        assert isinstance(group["groupName"], str) and group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert group["template"]["spec"]["containers"]
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int), f"{group['groupName']}.{key} must be an integer"
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]

    # The services connect to ray://<cluster>-head-svc:<client port> (KubeRay's head service name).
    config = i2x_config(docs)["data"]
    assert config["I2X_RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"

    worker = spec["workerGroupSpecs"][0]
    worker_container = worker["template"]["spec"]["containers"][0]
    resources = worker_container["resources"]
    if name == "prod":
        # GPU workers: a GPU requested and limited, tolerating the usual GPU-node taint, the CUDA image.
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in worker["template"]["spec"]["tolerations"])
        assert worker_container["image"].split(":")[0].endswith("ray-worker-gpu")
        assert worker["maxReplicas"] > worker["minReplicas"], "prod workers must be able to scale"
        assert config["I2X_RAY_GPUS_PER_TASK"] == "1"
    else:
        # dev: CPU workers, no GPU asked anywhere.
        assert "nvidia.com/gpu" not in resources.get("requests", {})
        assert "nvidia.com/gpu" not in resources.get("limits", {})
        assert worker_container["image"].split(":")[0].endswith("ray-worker")
        assert config["I2X_RAY_GPUS_PER_TASK"] == "0"


def test_every_container_is_hardened_and_bounded(overlay):
    name, docs = overlay
    templates = pod_templates(docs)
    assert len(templates) >= len(SERVICES) + 2
    for template in templates:
        pod_security = template.spec.get("securityContext", {})
        for c in containers(template):
            where = f"{name}: {template.owner} container {c['name']}"
            security = c.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 1)) != 0, where
            for kind in ("requests", "limits"):
                amounts = c.get("resources", {}).get(kind, {})
                assert {"cpu", "memory"} <= set(amounts), f"{where}: resources.{kind} needs cpu and memory"


def test_probes_are_native_grpc_on_declared_ports(overlay):
    name, docs = overlay
    for template in pod_templates(docs):
        for c in containers(template):
            declared_numbers = {p["containerPort"] for p in c.get("ports", [])}
            declared_names = {p.get("name") for p in c.get("ports", [])}
            for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(probe_kind)
                if not probe:
                    continue
                action = next(v for k, v in probe.items() if k in ("grpc", "httpGet", "tcpSocket", "exec"))
                if "port" in action:
                    port = action["port"]
                    assert port in declared_numbers or port in declared_names, (
                        f"{name}: {template.owner}/{c['name']} {probe_kind} port {port} is not a declared containerPort")
    for svc, deployment in service_deployments(docs).items():
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        health_port = health_port_of(c, docs)
        # The API port, the plaintext health-only port and /metrics, each declared under its name.
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
            "grpc": SERVICE_PORTS[svc], "health": health_port,
            "metrics": int(resolved_env(c, docs)["I2X_METRICS_PORT"])}
        # Every probe goes to the health port, in dev as in prod, so the probes stay the same
        # whether or not TLS is on.
        for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe_kind]["grpc"]["port"] == health_port, f"{name}/{svc} {probe_kind}"
        # The Service exposes the API and /metrics (for a ServiceMonitor): the health port serves kubelet only.
        service = by_kind(docs, "Service")[f"i2x-{svc}"]
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (SERVICE_PORTS[svc], "grpc"), (int(resolved_env(c, docs)["I2X_METRICS_PORT"]), "metrics")]
        assert selects_labels(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        assert c["args"] == ["serve", svc]


def health_port_of(container: dict, docs) -> int:
    """The container's I2X_HEALTH_PORT as a number; fails when it is unset or 0 (off)."""
    value = resolved_env(container, docs).get("I2X_HEALTH_PORT")
    assert isinstance(value, str) and value.isdigit() and int(value) > 0, (
        f"{container['name']}: I2X_HEALTH_PORT must be a literal port number, got {value!r}")
    return int(value)


def test_prod_probes_reach_a_plaintext_port_beside_the_tls_port():
    """kubelet's gRPC probes speak plaintext only: with TLS on, a probe on the API port would
    fail its handshake and kubelet would restart a healthy pod forever."""
    docs = render(K8S / "overlays" / "prod")
    for svc, deployment in service_deployments(docs).items():
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        env = resolved_env(c, docs)
        assert env.get("I2X_TLS_CERT") and env.get("I2X_TLS_KEY"), f"prod/{svc} must serve TLS"
        api_port, health_port = int(env["I2X_PORT"]), health_port_of(c, docs)
        assert health_port != api_port, f"prod/{svc}: the health port must not be the TLS API port"
        for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe_port = c[probe_kind]["grpc"]["port"]
            assert probe_port == health_port, (
                f"prod/{svc} {probe_kind} probes {probe_port}, not I2X_HEALTH_PORT={health_port}")
            assert probe_port != api_port, f"prod/{svc} {probe_kind} probes the TLS port {api_port}"


def test_service_replicas_share_jobs_through_leases(overlay):
    """Jobs carry an owner lease in the store (JobManager, I2X_JOB_LEASE_SECONDS): a replica takes
    over only jobs whose owner stopped heartbeating, so replicas and rolling updates are safe.
    prod runs at least 2 replicas per service, updated without losing one, behind a
    PodDisruptionBudget; dev may run 1."""
    name, docs = overlay
    config_maps = by_kind(docs, "ConfigMap")
    budgets = by_kind(docs, "PodDisruptionBudget")
    for svc, deployment in service_deployments(docs).items():
        spec = deployment["spec"]
        env = resolved_env(spec["template"]["spec"]["containers"][0], docs)
        assert float(env.get("I2X_JOB_LEASE_SECONDS") or 0) > 0, (
            f"{name}/{svc}: set I2X_JOB_LEASE_SECONDS (ConfigMap {sorted(config_maps)})")
        assert spec["strategy"]["type"] == "RollingUpdate", f"{name}/{svc}"
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, f"{name}/{svc}"
        if name != "prod":
            continue
        assert spec["replicas"] >= 2, f"prod/{svc}: run at least 2 replicas"
        budget = budgets.get(f"i2x-{svc}")
        assert budget is not None, f"prod/{svc}: no PodDisruptionBudget"
        assert budget["spec"]["minAvailable"] == 1, f"prod/{svc}"
        assert selects_labels(budget["spec"]["selector"]["matchLabels"],
                              spec["template"]["metadata"]["labels"]), f"prod/{svc}: the budget selects no pod"


def selects_labels(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_writable_paths_are_empty_dirs(overlay):
    """A read-only root needs emptyDirs where the app writes: /tmp, HOME caches, Ray's session
    directory and object store."""
    name, docs = overlay
    home = docker_env("Dockerfile")["HOME"]
    for template in pod_templates(docs):
        volumes = {v["name"]: v for v in template.spec.get("volumes", [])}
        for c in template.spec["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", [])}
            needed = ["/tmp"]
            if template.owner.startswith("Deployment/i2x-"):
                needed.append(home)
            if template.owner.startswith("RayCluster/"):
                needed += ["/tmp/ray", "/dev/shm", "/home/ray/.cache"]
            for path in needed:
                assert path in mounts and "emptyDir" in mounts[path], (
                    f"{name}: {template.owner}/{c['name']} needs an emptyDir at {path}")
            if template.owner.startswith("RayCluster/"):
                assert mounts["/dev/shm"]["emptyDir"].get("medium") == "Memory", "Ray's object store lives in /dev/shm"


def docker_env(dockerfile: str) -> dict[str, str]:
    text = (REPO / "deploy" / "docker" / dockerfile).read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_images_are_pinned_to_the_package_version(overlay):
    name, docs = overlay
    seen = set()
    for template in pod_templates(docs):
        for c in template.spec.get("initContainers", []) + template.spec["containers"]:
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[^/]+$", image), f"{name}: {image} has no tag"
            tag = image.rsplit(":", 1)[1]
            assert tag != "latest", f"{name}: {template.owner} uses a latest tag"
            repository = image.rsplit(":", 1)[0].rsplit("/", 1)[-1]
            if repository in OUR_IMAGES:
                assert tag == VERSION, f"{name}: {image} must be tagged with the package version {VERSION}"
                seen.add(repository)
    assert {"services", "ray-worker"} <= seen
    if name == "prod":
        assert "ray-worker-gpu" in seen


def test_every_setting_the_services_read_is_set(overlay):
    name, docs = overlay
    registered = {s.env for s in SETTINGS}
    omittable = OMITTABLE[name]
    assert set(omittable) <= registered, "OMITTABLE names a setting that no longer exists"
    for svc, deployment in service_deployments(docs).items():
        template = deployment["spec"]["template"]["spec"]
        c = template["containers"][0]
        env = resolved_env(c, docs)
        i2x_env = {k for k in env if k.startswith("I2X_") or k in registered}  # MLFLOW_TRACKING_URI too
        assert i2x_env <= registered, f"{name}/{svc} sets unknown settings {sorted(i2x_env - registered)}"
        missing = registered - set(omittable) - i2x_env
        assert not missing, f"{name}/{svc} leaves {sorted(missing)} unset"
        assert env["I2X_HOST"] == "0.0.0.0", "in a container the server must bind all interfaces"
        assert env["I2X_PORT"] == str(SERVICE_PORTS[svc])
        assert str(env["I2X_STORE"]).startswith("s3://"), "pods share the store only through S3/MinIO"
        for secret_setting in ("I2X_S3_ACCESS_KEY", "I2X_S3_SECRET_KEY", "I2X_API_TOKEN"):
            assert isinstance(env[secret_setting], tuple) and env[secret_setting][0] == "secret", (
                f"{name}/{svc}: {secret_setting} must come from a Secret, not a literal or ConfigMap")
        # TLS settings are file paths: they must lie in a volume mounted from a Secret.
        secret_mounts = secret_mount_paths(template, c)
        for path_setting in ("I2X_TLS_CERT", "I2X_TLS_KEY"):
            if path_setting in env:
                path = env[path_setting]
                assert any(path.startswith(m + "/") for m in secret_mounts), (
                    f"{name}/{svc}: {path_setting}={path} is not in a Secret volume ({secret_mounts})")
    ray_templates = [t for t in pod_templates(docs) if t.owner.startswith("RayCluster/")]
    for template in ray_templates:
        env = resolved_env(template.spec["containers"][0], docs)
        missing = [s for s in RAY_SETTINGS if s not in env]
        assert not missing, f"{name}: {template.owner} cannot reach the store without {missing}"


def secret_mount_paths(pod_spec: dict, container: dict) -> list[str]:
    secret_volumes = {v["name"] for v in pod_spec.get("volumes", []) if "secret" in v}
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_volumes]


def referenced_secrets(docs) -> dict[str, set[str]]:
    """Secret name -> keys the workloads read from it (empty set: the whole Secret, e.g. a volume)."""
    refs: dict[str, set[str]] = {}
    for template in pod_templates(docs):
        for v in template.spec.get("volumes", []):
            if "secret" in v:
                refs.setdefault(v["secret"]["secretName"], set())
        for c in containers(template):
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    refs.setdefault(source["secretRef"]["name"], set())
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    return refs


def deploy_doc_commands() -> list[str]:
    """The shell commands in docs/DEPLOY.md, continuation lines joined."""
    text = (REPO / "docs" / "DEPLOY.md").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()]


def test_referenced_secrets_exist_or_are_documented(overlay):
    name, docs = overlay
    rendered = by_kind(docs, "Secret")
    refs = referenced_secrets(docs)
    assert {"i2x-s3", "i2x-api-token"} <= set(refs)
    commands = [c for c in deploy_doc_commands() if c.startswith("kubectl create secret")]
    for secret_name, keys in refs.items():
        if name == "dev":
            assert secret_name in rendered, f"dev references Secret {secret_name} but does not create it"
            secret = rendered[secret_name]
            present = set(secret.get("stringData", {})) | set(secret.get("data", {}))
            assert keys <= present, f"dev Secret {secret_name} lacks {sorted(keys - present)}"
        elif secret_name not in rendered:
            # prod: the user creates it; DEPLOY.md must give the exact command in the namespace.
            matching = [c for c in commands if re.search(rf"\s{re.escape(secret_name)}(\s|$)", c)
                        and re.search(rf"\s-n {NAMESPACES[name]}(\s|$)", c)]
            assert matching, f"docs/DEPLOY.md must show `kubectl create secret ... {secret_name} -n {NAMESPACES[name]}`"
            for key in keys:
                assert any(f"--from-literal={key}=" in c or f"--from-file={key}=" in c for c in matching), (
                    f"docs/DEPLOY.md's command for {secret_name} must set key {key}")
            if not keys:  # mounted whole: the TLS Secret with tls.crt / tls.key
                assert any(c.startswith(f"kubectl create secret tls {secret_name}") for c in matching)
    if name == "prod":
        assert not rendered, "prod must not ship credentials: the user creates its Secrets"


def test_configmap_references_exist(overlay):
    name, docs = overlay
    configmaps = by_kind(docs, "ConfigMap")
    for template in pod_templates(docs):
        for c in containers(template):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in configmaps[ref["name"]]["data"], f"{name}: {ref}"


def endpoints(name, docs):
    """The pods of the overlay as NetworkPolicy endpoints, keyed by a short role name."""
    ns = NAMESPACES[name]
    out = {}
    for template in pod_templates(docs):
        out[template.owner] = Endpoint.pod(ns, template.labels)
    return out


def test_network_policies_open_exactly_the_paths_i2x_uses(overlay):
    name, docs = overlay
    ns = NAMESPACES[name]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = endpoints(name, docs)
    services = {svc: pods[f"Deployment/i2x-{svc}"] for svc in SERVICES}
    head = pods["RayCluster/i2x-ray/head"]
    workers = [p for owner, p in pods.items() if owner.startswith("RayCluster/") and not owner.endswith("/head")]
    dns = Endpoint.pod("kube-system", {"k8s-app": "kube-dns"})
    client = Endpoint.pod("analysts", {"i2x.io/client": "true"})
    stranger = Endpoint.pod("analysts", {"app": "something-else"})
    stranger_here = Endpoint.pod(ns, {"app": "something-else"})

    for svc, pod in services.items():
        port = SERVICE_PORTS[svc]
        assert allowed(policies, client, pod, port), f"labelled clients must reach {svc}"
        assert not allowed(policies, stranger, pod, port), f"unlabelled pods must not reach {svc}"
        assert not allowed(policies, stranger_here, pod, port)
        assert not allowed(policies, client, pod, 22), "only the gRPC ports are open"
        # The plaintext health port is for kubelet, whose probes come from the pod's own node:
        # NetworkPolicy does not govern that traffic, so no pod needs (or gets) a rule for it.
        health_port = health_port_of(by_kind(docs, "Deployment")[f"i2x-{svc}"]["spec"]["template"]["spec"]
                                     ["containers"][0], docs)
        assert not allowed(policies, client, pod, health_port), f"{svc}: health port open to clients"
        assert not allowed(policies, stranger_here, pod, health_port)
        for other in SERVICES:
            assert allowed(policies, pod, services[other], SERVICE_PORTS[other]), f"{svc} -> {other}"
        for ray_port in (10001, 6379, 8265):
            assert allowed(policies, pod, head, ray_port), f"{svc} -> Ray head :{ray_port}"
        assert not allowed(policies, stranger_here, head, 10001)
        assert allowed(policies, pod, dns, 53, "UDP")
    for worker in workers:
        # Ray nodes use many dynamic ports between themselves.
        assert allowed(policies, worker, head, 6379) and allowed(policies, head, worker, 23456)
        assert allowed(policies, worker, worker, 34567)
        assert not allowed(policies, stranger_here, worker, 34567)
    store_users = list(services.values()) + [head] + workers
    if name == "dev":
        store = pods["Deployment/minio"]
        for pod in store_users + [pods["Job/minio-create-bucket"]]:
            assert allowed(policies, pod, store, 9000)
        assert not allowed(policies, stranger_here, store, 9000), "only I2X pods reach the store"
        assert not allowed(policies, services["training"], store, 9001), "the console stays closed"
        assert not allowed(policies, store, Endpoint.external("198.51.100.7"), 443), "the store talks to nobody"
    else:
        s3_port = int(i2x_config(docs)["data"]["I2X_S3_ENDPOINT"].rsplit(":", 1)[1])
        s3 = Endpoint.external("198.51.100.7")  # an address outside the cluster
        for pod in store_users:
            assert allowed(policies, pod, s3, s3_port), "services and Ray must reach the external store"
        assert not allowed(policies, services["training"], s3, 80)
    # The autoscaler on the head scales workers through the API server; workers do not need it.
    api_server = Endpoint.external("10.96.0.1")
    assert allowed(policies, head, api_server, 443)
    assert not any(allowed(policies, w, api_server, 6443) for w in workers)


def test_deploy_doc_names_what_the_overlays_render():
    """Every namespace, Service and Deployment DEPLOY.md's kubectl commands name exists."""
    rendered = {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}
    names = {(d["kind"], d["metadata"]["name"]) for docs in rendered.values() for d in docs}
    kubectl_lines = [c for c in deploy_doc_commands() if c.startswith("kubectl ")]
    assert kubectl_lines
    for line in kubectl_lines:
        for ns in re.findall(r"-n (\S+)", line):
            assert ns in NAMESPACES.values(), f"DEPLOY.md: unknown namespace in `{line}`"
        for kind, ref in re.findall(r"(?:^|\s)(svc|deployment|deploy|job|raycluster)/([\w-]+)(?=\s|$)", line):
            full = {"svc": "Service", "deployment": "Deployment", "deploy": "Deployment", "job": "Job",
                    "raycluster": "RayCluster"}[kind]
            assert (full, ref) in names or (full == "Service" and ref == "i2x-ray-head-svc"), (
                f"DEPLOY.md names {kind}/{ref}, which no overlay renders")
        for kind, ref in re.findall(r"get (raycluster) ([\w-]+)", line):
            assert ("RayCluster", ref) in names


def test_metrics_are_declared_scrapable_and_reachable_by_prometheus_only(overlay):
    """Every service serves /metrics on I2X_METRICS_PORT; the pod declares that port (named
    "metrics", with the prometheus.io annotations), the Service exposes it for the ServiceMonitor,
    and the NetworkPolicies let Prometheus in (namespace monitoring) and nobody else."""
    name, docs = overlay
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = endpoints(name, docs)
    services = by_kind(docs, "Service")
    prometheus = Endpoint.pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    client = Endpoint.pod("analysts", {"i2x.io/client": "true"})
    stranger_here = Endpoint.pod(NAMESPACES[name], {"app": "something-else"})
    for svc, deployment in service_deployments(docs).items():
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        port = resolved_env(container, docs)["I2X_METRICS_PORT"]
        assert isinstance(port, str) and port.isdigit() and int(port) > 0, f"{name}/{svc}: metrics off ({port!r})"
        port = int(port)
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert declared.get("metrics") == port, f"{name}/{svc}: no container port 'metrics' = {port}"
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true"
        assert annotations.get("prometheus.io/port") == str(port)
        assert annotations.get("prometheus.io/path") == "/metrics"
        service_ports = {p["name"]: p for p in services[f"i2x-{svc}"]["spec"]["ports"]}
        assert service_ports["metrics"]["targetPort"] == "metrics"
        pod = pods[f"Deployment/i2x-{svc}"]
        assert allowed(policies, prometheus, pod, port), f"{name}/{svc}: Prometheus cannot scrape"
        assert not allowed(policies, client, pod, port), f"{name}/{svc}: metrics open to clients"
        assert not allowed(policies, stranger_here, pod, port)
        assert not allowed(policies, prometheus, pod, SERVICE_PORTS[svc]), "Prometheus needs no gRPC"
    # Traces go out to an OTLP collector in "monitoring", from the services and the Ray pods.
    collector = Endpoint.pod("monitoring", {"app.kubernetes.io/name": "otel-collector"})
    senders = [p for owner, p in pods.items() if owner.startswith(("Deployment/i2x-", "RayCluster/"))]
    assert len(senders) >= len(SERVICES) + 2
    for sender in senders:
        assert allowed(policies, sender, collector, 4317), f"{name}: {sender.labels} cannot export traces"
        assert not allowed(policies, sender, collector, 8080)

    # The ServiceMonitor component renders on its own and selects exactly the four Services' metrics port.
    (monitor,) = render(K8S / "components" / "servicemonitor")
    assert monitor["kind"] == "ServiceMonitor" and monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [n for n, s in services.items() if selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(selected) == sorted(f"i2x-{svc}" for svc in SERVICES)
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
