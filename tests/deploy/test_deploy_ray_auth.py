"""Ray token authentication in the manifests.

As shipped it is off everywhere: KubeRay's `ray start --head` in Ray 2.60 turns it on only with
RAY_AUTH_MODE=token or a token it can find, and the Ray pods provide neither, so the services'
ray:// connection needs no token. docs/DEPLOY.md ("Ray token authentication") gives the patches
that turn it on; these tests apply exactly those blocks of DEPLOY.md to both overlays and check
that the token then reaches every Ray process and every service from the Secret, in `env`.
"""

from __future__ import annotations

import copy
import os
import re

import kubernetes_validate
import pytest
import yaml

from i2x.config import SERVICES
from k8s_manifests import (K8S, NAMESPACES, OVERLAYS, RAY_AUTH_VARS, REPO, by_kind, kubectl, ray_auth_problems,
                           ray_processes, render, resolved_env)

pytestmark = pytest.mark.skipif(kubectl() is None,
                                reason="kubectl is missing: `make system-deps` installs Debian's kubernetes-client")

TOKEN_SECRET = ("secret", "i2x-ray-token", "auth_token")
RECIPE_BLOCKS = ("kustomization.yaml", "ray-auth-raycluster.yaml", "ray-auth-services.yaml")


def deploy_doc_yaml_blocks() -> dict[str, str]:
    """DEPLOY.md's ```yaml blocks whose first line is `# <file name>: ...`, by file name."""
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    return {m.group(1): m.group(0)[len("```yaml\n"):-len("```")]
            for m in re.finditer(r"```yaml\n# ([\w.-]+\.yaml)\b[^\n]*\n.*?```", text, re.DOTALL)}


def render_with_doc_recipe(overlay: str, directory) -> list[dict]:
    """The overlay with DEPLOY.md's Ray token patches added, as a user following it gets it.
    The patch files sit in a kustomization on top of the overlay (kustomize does not let an
    overlay read patch files outside its directory, and a base must be a relative path)."""
    blocks = deploy_doc_yaml_blocks()
    assert set(RECIPE_BLOCKS) <= set(blocks), f"DEPLOY.md lacks the blocks {set(RECIPE_BLOCKS) - set(blocks)}"
    kustomization = yaml.safe_load(blocks["kustomization.yaml"])
    kustomization.update(apiVersion="kustomize.config.k8s.io/v1beta1", kind="Kustomization",
                         bases=[os.path.relpath(K8S / "overlays" / overlay, directory)])
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    for name in RECIPE_BLOCKS[1:]:
        (directory / name).write_text(blocks[name])
    return render(directory)


@pytest.fixture(scope="module", params=OVERLAYS)
def with_recipe(request, tmp_path_factory):
    name = request.param
    return name, render_with_doc_recipe(name, tmp_path_factory.mktemp(f"ray-auth-{name}"))


def expected_processes(name: str, docs) -> list[str]:
    """Where the token must go, spelled out: head, each worker group, the autoscaler where it
    runs (prod), the four services."""
    cluster = by_kind(docs, "RayCluster")["i2x-ray"]["spec"]
    where = ["RayCluster/i2x-ray/head/ray-head"]
    if cluster.get("enableInTreeAutoscaling"):
        where.append("RayCluster/i2x-ray/head/autoscaler")
    where += [f"RayCluster/i2x-ray/{g['groupName']}/ray-worker" for g in cluster["workerGroupSpecs"]]
    return where + [f"Deployment/i2x-{svc}" for svc in SERVICES]


@pytest.mark.parametrize("name", OVERLAYS)
def test_ray_token_auth_is_off_everywhere_as_shipped(name):
    docs = render(K8S / "overlays" / name)
    for where, container in ray_processes(docs, SERVICES):
        env = resolved_env(container, docs)
        assert not [v for v in RAY_AUTH_VARS if v in env], f"{name}: {where} sets Ray auth variables"
    assert ray_auth_problems(docs, SERVICES) == []


def test_doc_recipe_gives_every_ray_process_and_service_the_token_from_the_secret(with_recipe):
    name, docs = with_recipe
    processes = dict(ray_processes(docs, SERVICES))
    assert sorted(processes) == sorted(expected_processes(name, docs))
    assert len(processes) == (6 if name == "dev" else 7)  # head + 1 worker group + 4 services (+ autoscaler)
    for where, container in processes.items():
        explicit = {item["name"] for item in container.get("env", [])}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= explicit, f"{name}: {where}"
        env = resolved_env(container, docs)
        assert env["RAY_AUTH_MODE"] == "token", f"{name}: {where}"
        assert env["RAY_AUTH_TOKEN"] == TOKEN_SECRET, f"{name}: {where} must read the token from the Secret"
    assert ray_auth_problems(docs, SERVICES) == []
    # The user creates the Secret (random token), in dev as in prod; no token ships in the repo.
    assert "i2x-ray-token" not in by_kind(docs, "Secret")
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    assert (f"kubectl create secret generic i2x-ray-token -n {NAMESPACES[name]} "
            "--from-literal=auth_token=") in doc
    for deployment in by_kind(docs, "Deployment").values():
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


@pytest.fixture(scope="module")
def prod_with_recipe(tmp_path_factory):
    return render_with_doc_recipe("prod", tmp_path_factory.mktemp("ray-auth-prod-mutations"))


def _drop_env(container: dict, names) -> None:
    # In place: the autoscaler's entry shares its env list with spec.autoscalerOptions.
    container["env"][:] = [e for e in container["env"] if e["name"] not in names]


def test_token_on_the_head_alone_is_reported_for_every_other_process(prod_with_recipe):
    """The trap: `ray start --head` turns auth on as soon as it finds a token, but workers, the
    autoscaler and ray:// clients send one only with RAY_AUTH_MODE=token of their own."""
    docs = copy.deepcopy(prod_with_recipe)
    for where, container in ray_processes(docs, SERVICES):
        if where != "RayCluster/i2x-ray/head/ray-head":
            _drop_env(container, RAY_AUTH_VARS)
    problems = ray_auth_problems(docs, SERVICES)
    others = [w for w in expected_processes("prod", docs) if w != "RayCluster/i2x-ray/head/ray-head"]
    assert sorted(problems) == sorted(f"{w}: {v} is missing" for w in others
                                      for v in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"))


def test_mode_from_the_configmap_is_reported_since_the_init_container_misses_it(prod_with_recipe):
    """KubeRay copies only `env` into wait-gcs-ready: RAY_AUTH_MODE via envFrom (the ConfigMap)
    leaves the worker's `ray health-check` unauthenticated."""
    docs = copy.deepcopy(prod_with_recipe)
    by_kind(docs, "ConfigMap")["i2x-config"]["data"]["RAY_AUTH_MODE"] = "token"
    processes = ray_processes(docs, SERVICES)
    for _, container in processes:
        _drop_env(container, {"RAY_AUTH_MODE"})
    problems = ray_auth_problems(docs, SERVICES)
    # Every container reads i2x-config except the autoscaler, which gets nothing at all then.
    assert sorted(problems) == sorted(
        f"{w}: RAY_AUTH_MODE is missing" if w.endswith("/autoscaler")
        else f"{w}: RAY_AUTH_MODE comes from envFrom; it must be an explicit env entry"
        for w, _ in processes)


def test_a_literal_or_second_token_is_reported(prod_with_recipe):
    docs = copy.deepcopy(prod_with_recipe)
    processes = dict(ray_processes(docs, SERVICES))
    literal = processes["Deployment/i2x-training"]
    for item in literal["env"]:
        if item["name"] == "RAY_AUTH_TOKEN":
            item.pop("valueFrom")
            item["value"] = "hunter2"
    other = processes["Deployment/i2x-clustering"]
    for item in other["env"]:
        if item["name"] == "RAY_AUTH_TOKEN":
            item["valueFrom"]["secretKeyRef"]["name"] = "another-token"
    assert sorted(ray_auth_problems(docs, SERVICES)) == sorted([
        "Deployment/i2x-training: RAY_AUTH_TOKEN must come from a Secret, not 'hunter2'",
        "RAY_AUTH_TOKEN comes from different Secret keys: "
        "[('another-token', 'auth_token'), ('i2x-ray-token', 'auth_token')]",
    ])
