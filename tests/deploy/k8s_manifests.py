"""Helpers for the deployment tests: render an overlay, walk its pods and containers, resolve a
container's environment, and decide whether a NetworkPolicy set lets one endpoint reach another.

Offline only: `kubectl kustomize` renders (no cluster), kubernetes_validate ships the schemas.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
DOCKER = REPO / "deploy" / "docker"
OVERLAYS = ("dev", "prod")
# Namespace each overlay deploys into (docs/DEPLOY.md uses the same).
NAMESPACES = {"dev": "i2x-dev", "prod": "i2x"}


def kubectl() -> str | None:
    """The kubectl to render with: $KUBECTL (to try another version), else the one on PATH;
    None when it is missing or its kustomize is older than v4 (no `patches`: the overlays need it)."""
    binary = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if binary is None:
        return None
    if binary not in _KUSTOMIZE_OK:
        proc = subprocess.run([binary, "version", "--client"], capture_output=True, text=True, timeout=60)
        match = re.search(r"Kustomize Version: v(\d+)", proc.stdout)
        _KUSTOMIZE_OK[binary] = bool(match) and int(match.group(1)) >= 4
    return binary if _KUSTOMIZE_OK[binary] else None


_KUSTOMIZE_OK: dict[str, bool] = {}


def render(path: Path) -> list[dict]:
    """`kubectl kustomize PATH` parsed; raises AssertionError with kubectl's message on failure."""
    binary = kubectl()
    proc = subprocess.run([binary, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`kubectl kustomize {path}` failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def i2x_config(docs: list[dict]) -> dict:
    """The generated ConfigMap i2x-config-<hash> (kustomize's configMapGenerator)."""
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and re.fullmatch(r"i2x-config-[a-z0-9]{10}",
                                                                             d["metadata"]["name"])]
    return config


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@dataclass
class PodTemplate:
    """One pod template of a workload: where it comes from, its labels and its pod spec."""
    owner: str  # e.g. "Deployment/i2x-training", "RayCluster/i2x-ray/head"
    labels: dict
    spec: dict
    extra_containers: list = field(default_factory=list)  # containers injected by an operator


def pod_templates(docs: list[dict]) -> list[PodTemplate]:
    """Every pod template in the rendered docs, with the labels the pods will really carry
    (KubeRay adds ray.io/cluster, ray.io/node-type and ray.io/group to its pods)."""
    out = []
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            t = d["spec"]["template"]
            out.append(PodTemplate(f"{d['kind']}/{name}", t.get("metadata", {}).get("labels", {}), t["spec"]))
        elif d["kind"] == "RayCluster":
            head = d["spec"]["headGroupSpec"]["template"]
            labels = dict(head.get("metadata", {}).get("labels", {}),
                          **{"ray.io/cluster": name, "ray.io/node-type": "head", "ray.io/group": "headgroup"})
            extra = []
            if d["spec"].get("enableInTreeAutoscaling"):
                # KubeRay adds the autoscaler sidecar from autoscalerOptions (env/envFrom appended
                # to its own variables).
                opts = d["spec"].get("autoscalerOptions", {})
                extra.append({"name": "autoscaler", "resources": opts.get("resources", {}),
                              "securityContext": opts.get("securityContext", {}),
                              "env": opts.get("env", []), "envFrom": opts.get("envFrom", [])})
            out.append(PodTemplate(f"RayCluster/{name}/head", labels, head["spec"], extra))
            for group in d["spec"]["workerGroupSpecs"]:
                t = group["template"]
                labels = dict(t.get("metadata", {}).get("labels", {}),
                              **{"ray.io/cluster": name, "ray.io/node-type": "worker",
                                 "ray.io/group": group["groupName"]})
                out.append(PodTemplate(f"RayCluster/{name}/{group['groupName']}", labels, t["spec"]))
    return out


def containers(template: PodTemplate) -> list[dict]:
    spec = template.spec
    return list(spec.get("initContainers", [])) + list(spec["containers"]) + template.extra_containers


def resolved_env(container: dict, docs: list[dict]) -> dict[str, object]:
    """Name -> where the value comes from: a literal str, ("configmap", name, key) or
    ("secret", name, key). envFrom ConfigMaps are expanded from the rendered docs; explicit env
    entries win over envFrom, as in Kubernetes."""
    configmaps = by_kind(docs, "ConfigMap")
    secrets = by_kind(docs, "Secret")
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names ConfigMap {name!r}, which the overlay does not render"
            for key, value in configmaps[name].get("data", {}).items():
                env[prefix + key] = value
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            secret = secrets.get(name, {})
            for key in list(secret.get("data", {})) + list(secret.get("stringData", {})):
                env[prefix + key] = ("secret", name, key)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "valueFrom" in item:
            ref = item["valueFrom"]
            if "secretKeyRef" in ref:
                env[item["name"]] = ("secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            elif "configMapKeyRef" in ref:
                cm = ref["configMapKeyRef"]
                env[item["name"]] = configmaps[cm["name"]]["data"][cm["key"]]
            else:
                env[item["name"]] = ("field", repr(ref))
        else:
            env[item["name"]] = ""
    return env


# ---- Ray token authentication -------------------------------------------------------------

RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_processes(docs: list[dict], services: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(where, container) for every container that runs Ray or talks to it: the Ray container of
    the head and of each worker group, any init container the manifests declare in a Ray pod
    (KubeRay's own wait-gcs-ready is injected from the Ray container's `env`, so it is covered
    by that container's entries), the autoscaler sidecar, and the services' containers."""
    out = []
    for template in pod_templates(docs):
        if template.owner.startswith("RayCluster/"):
            out += [(f"{template.owner}/{c['name']}", c) for c in template.spec.get("initContainers", [])]
            out.append((f"{template.owner}/{template.spec['containers'][0]['name']}",
                        template.spec["containers"][0]))
            out += [(f"{template.owner}/{c['name']}", c) for c in template.extra_containers]
    deployments = by_kind(docs, "Deployment")
    for svc in services:
        out.append((f"Deployment/i2x-{svc}", deployments[f"i2x-{svc}"]["spec"]["template"]["spec"]["containers"][0]))
    return out


def ray_auth_problems(docs: list[dict], services: tuple[str, ...]) -> list[str]:
    """What breaks Ray's token authentication in these docs; [] when it is consistently off or on.

    Off: no container sets any RAY_AUTH_* (`ray start --head` then runs unauthenticated).
    On: once anything sets one, a head with a token turns auth on, and every process that
    connects to it sends the token only with RAY_AUTH_MODE=token in its own environment. So each
    Ray container and each service needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from one and the
    same Secret key, as explicit `env` entries: KubeRay copies only `env` into the workers'
    wait-gcs-ready init container (its `ray health-check` must authenticate too)."""
    processes = ray_processes(docs, services)
    resolved = {where: resolved_env(c, docs) for where, c in processes}
    if not any(var in env for env in resolved.values() for var in RAY_AUTH_VARS):
        return []
    problems = []
    token_sources = set()
    for where, container in processes:
        explicit = {item["name"]: item for item in container.get("env", [])}
        env = resolved[where]
        for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            if var not in env:
                problems.append(f"{where}: {var} is missing")
            elif var not in explicit:
                problems.append(f"{where}: {var} comes from envFrom; it must be an explicit env entry")
        if "RAY_AUTH_MODE" in env and env["RAY_AUTH_MODE"] != "token":
            problems.append(f"{where}: RAY_AUTH_MODE={env['RAY_AUTH_MODE']!r}, not 'token'")
        if "RAY_AUTH_TOKEN_PATH" in env:
            problems.append(f"{where}: RAY_AUTH_TOKEN_PATH is set; use RAY_AUTH_TOKEN from the Secret")
        token = env.get("RAY_AUTH_TOKEN")
        if token is not None:
            if isinstance(token, tuple) and token[0] == "secret":
                token_sources.add(token[1:])
            else:
                problems.append(f"{where}: RAY_AUTH_TOKEN must come from a Secret, not {token!r}")
    if len(token_sources) > 1:
        problems.append(f"RAY_AUTH_TOKEN comes from different Secret keys: {sorted(token_sources)}")
    return problems


# ---- NetworkPolicy evaluation -------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace, its labels, pod labels) or an address outside the cluster (ip)."""
    namespace: str | None = None
    namespace_labels: tuple = ()
    labels: tuple = ()
    ip: str | None = None

    @staticmethod
    def pod(namespace: str, labels: dict) -> "Endpoint":
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        return Endpoint(namespace, tuple(sorted(ns_labels.items())), tuple(sorted(labels.items())))

    @staticmethod
    def external(ip: str) -> "Endpoint":
        return Endpoint(ip=ip)


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics ({} selects everything)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict, policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False  # ipBlock rules are meant for addresses outside the cluster
        addr = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return addr in ipaddress.ip_network(block["cidr"]) and not any(
            addr in ipaddress.ip_network(c) for c in block.get("except", []))
    if other.ip is not None:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], dict(other.namespace_labels))
    else:
        ns_ok = other.namespace == policy_namespace
    return ns_ok and selects(peer.get("podSelector", {}), dict(other.labels))


def _port_matches(ports: list[dict] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        assert isinstance(p["port"], int), f"named NetworkPolicy port {p['port']!r}: use numbers"
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def _side_allows(policies: list[dict], subject: Endpoint, other: Endpoint, port: int, protocol: str,
                 direction: str) -> bool:
    """Whether the policies of subject's namespace let subject send (Egress) to / receive
    (Ingress) from `other` on port. No policy selecting subject for that direction: allowed."""
    if subject.ip is not None:
        return True  # outside the cluster: not governed by these policies
    peers_key = "to" if direction == "Egress" else "from"
    selecting = [p for p in policies
                 if p["metadata"].get("namespace") == subject.namespace
                 and direction in p["spec"].get("policyTypes", ["Ingress"])
                 and selects(p["spec"]["podSelector"], dict(subject.labels))]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(direction.lower(), []):
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, subject.namespace, other) for peer in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Both the sender's egress and the receiver's ingress policies must allow the connection."""
    return (_side_allows(policies, src, dst, port, protocol, "Egress")
            and _side_allows(policies, dst, src, port, protocol, "Ingress"))
