"""How the pods stop and what they reserve: Ray pods with requests equal to limits and a
`ray stop` preStop; grace periods that outlast the services' drain, measured on a real
`i2x serve` sent SIGTERM; and kustomizations free of deprecated fields."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from k8s_manifests import K8S, OVERLAYS, kubectl, pod_templates, render, resolved_env

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl with kustomize >= v4 is missing "
                                "(Debian 12's kubectl 1.20 is too old)")

DEPRECATED = ("bases", "patchesStrategicMerge", "patchesJson6902", "commonLabels", "vars")
# The time kept free between the process's exit and the kubelet's SIGKILL.
MARGIN_SECONDS = 5


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


def test_kustomizations_use_no_deprecated_fields():
    for path in K8S.rglob("kustomization.yaml"):
        fields = set(yaml.safe_load(path.read_text()))
        assert not fields & set(DEPRECATED), f"{path.relative_to(K8S)} uses {sorted(fields & set(DEPRECATED))}"
    for name in OVERLAYS:
        proc = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / name)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "deprecated" not in proc.stderr.lower(), proc.stderr


def test_ray_pods_request_what_they_limit_and_leave_the_cluster_before_sigterm(overlay):
    name, docs = overlay
    ray_pods = [t for t in pod_templates(docs) if t.owner.startswith("RayCluster/")]
    assert len(ray_pods) >= 2
    for template in ray_pods:
        container = template.spec["containers"][0]
        resources = container["resources"]
        # KubeRay turns the limits into `ray start --num-cpus/--num-gpus/--memory`.
        assert resources["requests"] == resources["limits"], f"{name} {template.owner}: {resources}"
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["ray", "stop"], template.owner
        assert template.spec["terminationGracePeriodSeconds"] >= 30, template.owner


def _sigterm_exit_seconds(tmp_path, grace: str) -> float:
    """Seconds from SIGTERM to exit of a real `i2x serve clustering` with I2X_GRACE_SECONDS=grace."""
    env = dict(os.environ, I2X_STORE=str(tmp_path / "store"), I2X_PORT="0", I2X_GRACE_SECONDS=grace)
    proc = subprocess.Popen([sys.executable, "-m", "i2x.cli", "serve", "clustering", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "listening on" in line:
                break
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        return time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_service_grace_periods_outlast_the_drain_by_five_seconds(overlay, tmp_path):
    """The drain is at most I2X_GRACE_SECONDS for in-flight calls plus what the process takes to
    exit; the latter is measured. terminationGracePeriodSeconds must leave MARGIN_SECONDS more."""
    name, docs = overlay
    exit_seconds = _sigterm_exit_seconds(tmp_path, "1")  # an idle service: the exit cost itself
    deployments = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("i2x-")
                   and d["metadata"]["name"] != "i2x-minio"]
    assert len(deployments) == 4
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        env = resolved_env(spec["containers"][0], docs)
        drain = float(env["I2X_GRACE_SECONDS"] if isinstance(env["I2X_GRACE_SECONDS"], str)
                      else _configmap_value(docs, env["I2X_GRACE_SECONDS"]))
        left = spec["terminationGracePeriodSeconds"] - drain - exit_seconds
        assert left >= MARGIN_SECONDS, (f"{name} {deployment['metadata']['name']}: grace "
                                        f"{spec['terminationGracePeriodSeconds']} s - drain {drain} s - exit "
                                        f"{exit_seconds:.1f} s leaves {left:.1f} s")


def _configmap_value(docs, ref) -> str:
    _, cm_name, key = ref
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)["data"][key]


def test_prod_spreads_the_replicas_and_gives_every_pod_the_i2x_priority():
    docs = render(K8S / "overlays" / "prod")
    (priority,) = [d for d in docs if d["kind"] == "PriorityClass"]
    assert priority["metadata"]["name"] == "i2x" and "namespace" not in priority["metadata"]
    for template in pod_templates(docs):
        if template.owner.startswith("Job/"):
            continue
        assert template.spec.get("priorityClassName") == "i2x", template.owner
        if not template.owner.startswith("Deployment/"):
            continue
        hostname = [c for c in template.spec["topologySpreadConstraints"]
                    if c["topologyKey"] == "kubernetes.io/hostname"]
        assert hostname and hostname[0]["whenUnsatisfiable"] == "DoNotSchedule", template.owner
        # The selector picks this Deployment's own pods.
        assert hostname[0]["labelSelector"]["matchLabels"].items() <= template.labels.items(), template.owner


def test_prod_ingress_reaches_every_service_over_grpc_and_the_policy_lets_it():
    from i2x.config import SERVICE_PORTS

    from k8s_manifests import by_kind

    docs = render(K8S / "overlays" / "prod")
    (ingress,) = by_kind(docs, "Ingress").values()
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS"
    services = by_kind(docs, "Service")
    backends = {}
    for rule in ingress["spec"]["rules"]:
        backend = rule["http"]["paths"][0]["backend"]["service"]
        port = next(p for p in services[backend["name"]]["spec"]["ports"] if p["name"] == backend["port"]["name"])
        assert port.get("appProtocol") == "grpc"
        backends[backend["name"]] = port["port"]
    assert backends == {f"i2x-{name}": port for name, port in SERVICE_PORTS.items()}
    hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    assert hosts == {rule["host"] for rule in ingress["spec"]["rules"]}
    assert ingress["spec"]["tls"][0]["secretName"] == "i2x-tls"
    policy = by_kind(docs, "NetworkPolicy")["i2x-from-ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert (rule["ports"][0]["port"], rule["ports"][0]["endPort"]) == (min(SERVICE_PORTS.values()),
                                                                       max(SERVICE_PORTS.values()))


def test_a_config_change_renames_the_generated_configmap_so_the_pods_roll(tmp_path):
    """configMapGenerator hashes the data into the name, and every reference (Deployments and,
    through kustomizeconfig.yaml, the RayCluster) follows: a new value is a new pod template."""
    import os as _os

    from k8s_manifests import i2x_config

    def names(docs) -> tuple[str, set[str]]:
        config = i2x_config(docs)["metadata"]["name"]
        refs = set()
        for template in pod_templates(docs):
            for container in template.spec["containers"]:
                refs |= {e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e}
        return config, refs

    prod = render(K8S / "overlays" / "prod")
    config, refs = names(prod)
    assert refs == {config}, "every pod reads the generated ConfigMap by its hashed name"
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [_os.path.relpath(K8S / "overlays" / "prod", tmp_path)],
        "patches": [{"patch": yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": "i2x-config"},
                                              "data": {"I2X_LOG_LEVEL": "DEBUG"}})}]}))
    changed, changed_refs = names(render(tmp_path))
    assert changed != config and changed_refs == {changed}
