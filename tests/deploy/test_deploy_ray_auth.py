"""Ray token authentication in the manifests.

prod turns it on: deploy/k8s/overlays/prod patches RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from
Secret i2x-ray-token into every Ray container and every service, as explicit `env`; the user
creates the Secret (docs/DEPLOY.md, 2b). dev leaves it off: KubeRay's `ray start --head` in
Ray 2.60 turns it on only with RAY_AUTH_MODE=token or a token it can find, and dev's Ray pods
provide neither. docs/DEPLOY.md ("Ray token authentication") shows prod's two patches as the
opt-in for dev; these tests check that those blocks are prod's files and that dev with exactly
those blocks added gets the token everywhere too.
"""

from __future__ import annotations

import copy
import os
import re

import kubernetes_validate
import pytest
import yaml

from i2x.config import SERVICES
from k8s_manifests import (i2x_config, K8S, RAY_AUTH_VARS, REPO, by_kind, kubectl, ray_auth_problems,
                           ray_processes, render, resolved_env)

pytestmark = pytest.mark.skipif(kubectl() is None,
                                reason="kubectl with kustomize >= v4 is missing (Debian 12's kubectl 1.20 is too old)")

TOKEN_SECRET = ("secret", "i2x-ray-token", "auth_token")
PATCH_FILES = ("ray-auth-raycluster.yaml", "ray-auth-services.yaml")
PROD = K8S / "overlays" / "prod"


def deploy_doc() -> str:
    return (REPO / "docs" / "DEPLOY.md").read_text()


def deploy_doc_yaml_blocks() -> dict[str, str]:
    """DEPLOY.md's ```yaml blocks whose first line is `# <file name>: ...`, by file name."""
    return {m.group(1): m.group(0)[len("```yaml\n"):-len("```")]
            for m in re.finditer(r"```yaml\n# ([\w.-]+\.yaml)\b[^\n]*\n.*?```", deploy_doc(), re.DOTALL)}


def render_with_doc_recipe(overlay: str, directory) -> list[dict]:
    """The overlay with DEPLOY.md's Ray token patches added, as a user following it gets it.
    The patch files sit in a kustomization on top of the overlay (kustomize does not let an
    overlay read patch files outside its directory, and a base must be a relative path)."""
    blocks = deploy_doc_yaml_blocks()
    wanted = ("kustomization.yaml",) + PATCH_FILES
    assert set(wanted) <= set(blocks), f"DEPLOY.md lacks the blocks {set(wanted) - set(blocks)}"
    kustomization = yaml.safe_load(blocks["kustomization.yaml"])
    kustomization.update(apiVersion="kustomize.config.k8s.io/v1beta1", kind="Kustomization",
                         resources=[os.path.relpath(K8S / "overlays" / overlay, directory)])
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    for name in PATCH_FILES:
        (directory / name).write_text(blocks[name])
    return render(directory)


@pytest.fixture(scope="module")
def prod():
    return render(PROD)


@pytest.fixture(scope="module")
def dev_with_recipe(tmp_path_factory):
    return render_with_doc_recipe("dev", tmp_path_factory.mktemp("ray-auth-dev"))


def expected_processes(docs) -> list[str]:
    """Where the token must go, spelled out: head, each worker group, the autoscaler where it
    runs (prod), the four services."""
    cluster = by_kind(docs, "RayCluster")["i2x-ray"]["spec"]
    where = ["RayCluster/i2x-ray/head/ray-head"]
    if cluster.get("enableInTreeAutoscaling"):
        where.append("RayCluster/i2x-ray/head/autoscaler")
    where += [f"RayCluster/i2x-ray/{g['groupName']}/ray-worker" for g in cluster["workerGroupSpecs"]]
    return where + [f"Deployment/i2x-{svc}" for svc in SERVICES]


def assert_token_everywhere_from_the_secret(name: str, docs: list[dict]) -> None:
    processes = dict(ray_processes(docs, SERVICES))
    assert sorted(processes) == sorted(expected_processes(docs))
    for where, container in processes.items():
        explicit = {item["name"] for item in container.get("env", [])}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= explicit, f"{name}: {where} needs both in `env`"
        env = resolved_env(container, docs)
        assert env["RAY_AUTH_MODE"] == "token", f"{name}: {where}"
        assert env["RAY_AUTH_TOKEN"] == TOKEN_SECRET, f"{name}: {where} must read the token from the Secret"
    # Never through the ConfigMap: KubeRay's wait-gcs-ready and the autoscaler would miss it.
    for configmap in by_kind(docs, "ConfigMap").values():
        assert not set(configmap.get("data", {})) & set(RAY_AUTH_VARS), f"{name}: {configmap['metadata']['name']}"
    assert ray_auth_problems(docs, SERVICES) == []
    # The user creates the Secret (random token); no token ships in the repo.
    assert "i2x-ray-token" not in by_kind(docs, "Secret")
    for deployment in by_kind(docs, "Deployment").values():
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_dev_leaves_ray_token_auth_off():
    docs = render(K8S / "overlays" / "dev")
    for where, container in ray_processes(docs, SERVICES):
        env = resolved_env(container, docs)
        assert not [v for v in RAY_AUTH_VARS if v in env], f"dev: {where} sets Ray auth variables"
    assert ray_auth_problems(docs, SERVICES) == []


def test_prod_gives_every_ray_process_and_service_the_token_from_the_secret(prod):
    assert len(dict(ray_processes(prod, SERVICES))) == 7  # head + autoscaler + 1 worker group + 4 services
    assert_token_everywhere_from_the_secret("prod", prod)


def test_prod_ray_token_secret_is_among_the_secrets_the_user_creates():
    doc = deploy_doc()
    step = doc[doc.index("## 2b. prod"):doc.index("## 3.")]
    assert ("kubectl create secret generic i2x-ray-token -n i2x "
            "--from-literal=auth_token=\"$(openssl rand -hex 32)\"") in step
    assert "four Secrets" in step
    assert not (PROD / "ray-token.yaml").exists()


def test_doc_blocks_are_prods_patch_files():
    """The dev opt-in is prod's own patches: the doc shows them verbatim and prod lists them as the
    doc's kustomization block says."""
    blocks = deploy_doc_yaml_blocks()
    for name in PATCH_FILES:
        assert blocks[name] == (PROD / name).read_text(), f"DEPLOY.md's {name} differs from prod's file"
    recipe = yaml.safe_load(blocks["kustomization.yaml"])
    kustomization = yaml.safe_load((PROD / "kustomization.yaml").read_text())
    for entry in recipe["patches"]:
        assert entry in kustomization["patches"]


def test_doc_recipe_gives_dev_the_token_everywhere(dev_with_recipe):
    assert len(dict(ray_processes(dev_with_recipe, SERVICES))) == 6  # head + 1 worker group + 4 services
    assert_token_everywhere_from_the_secret("dev", dev_with_recipe)
    assert ("kubectl create secret generic i2x-ray-token -n i2x-dev "
            "--from-literal=auth_token=") in deploy_doc()


def _drop_env(container: dict, names) -> None:
    # In place: the autoscaler's entry shares its env list with spec.autoscalerOptions.
    container["env"][:] = [e for e in container["env"] if e["name"] not in names]


def test_token_on_the_head_alone_is_reported_for_every_other_process(prod):
    """The trap: `ray start --head` turns auth on as soon as it finds a token, but workers, the
    autoscaler and ray:// clients send one only with RAY_AUTH_MODE=token of their own."""
    docs = copy.deepcopy(prod)
    for where, container in ray_processes(docs, SERVICES):
        if where != "RayCluster/i2x-ray/head/ray-head":
            _drop_env(container, RAY_AUTH_VARS)
    problems = ray_auth_problems(docs, SERVICES)
    others = [w for w in expected_processes(docs) if w != "RayCluster/i2x-ray/head/ray-head"]
    assert sorted(problems) == sorted(f"{w}: {v} is missing" for w in others
                                      for v in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"))


def test_mode_from_the_configmap_is_reported_since_the_init_container_misses_it(prod):
    """KubeRay copies only `env` into wait-gcs-ready: RAY_AUTH_MODE via envFrom (the ConfigMap)
    leaves the worker's `ray health-check` unauthenticated."""
    docs = copy.deepcopy(prod)
    i2x_config(docs)["data"]["RAY_AUTH_MODE"] = "token"
    processes = ray_processes(docs, SERVICES)
    for _, container in processes:
        _drop_env(container, {"RAY_AUTH_MODE"})
    problems = ray_auth_problems(docs, SERVICES)
    # Every container reads i2x-config except the autoscaler, which gets nothing at all then.
    assert sorted(problems) == sorted(
        f"{w}: RAY_AUTH_MODE is missing" if w.endswith("/autoscaler")
        else f"{w}: RAY_AUTH_MODE comes from envFrom; it must be an explicit env entry"
        for w, _ in processes)


def test_a_declared_init_container_in_a_ray_pod_without_the_token_is_reported(prod):
    """An init container the manifests add themselves (unlike KubeRay's wait-gcs-ready) gets
    nothing from the Ray container's env."""
    docs = copy.deepcopy(prod)
    worker = by_kind(docs, "RayCluster")["i2x-ray"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["initContainers"] = [{"name": "wait-gcs", "image": "i2x/ray-worker:0.1.0",
                                 "command": ["ray", "health-check"]}]
    assert sorted(ray_auth_problems(docs, SERVICES)) == [
        "RayCluster/i2x-ray/gpu-workers/wait-gcs: RAY_AUTH_MODE is missing",
        "RayCluster/i2x-ray/gpu-workers/wait-gcs: RAY_AUTH_TOKEN is missing",
    ]


def test_a_literal_or_second_token_is_reported(prod):
    docs = copy.deepcopy(prod)
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
