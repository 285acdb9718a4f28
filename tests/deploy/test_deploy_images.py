"""The Dockerfiles (they cannot be built here) agree with the package, the Ray the services are
tested with, the manifests and docs/DEPLOY.md."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib

from packaging.requirements import Requirement

from k8s_manifests import DOCKER, K8S, OVERLAYS, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def build_args(dockerfile: str) -> dict[str, str]:
    """ARG defaults of a Dockerfile (the first default wins, as docker does per stage)."""
    out: dict[str, str] = {}
    for line in (DOCKER / dockerfile).read_text().splitlines():
        m = re.match(r"ARG\s+(\w+)=(\S*)", line)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


def instructions(dockerfile: str, keyword: str) -> list[str]:
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    return [line[len(keyword) + 1:].strip() for line in text.splitlines() if line.startswith(keyword + " ")]


def test_ray_is_pinned_to_the_tested_version_everywhere():
    installed = importlib.metadata.version("ray")
    worker, services = build_args("Dockerfile.ray-worker"), build_args("Dockerfile")
    # Ray client (services) and cluster (head, workers) must run the same Ray.
    assert worker["RAY_VERSION"] == services["RAY_VERSION"] == installed
    ray_requirement = next(Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["server"]
                           if Requirement(r).name == "ray")
    # An exact pin: a range would let `pip install` pick a Ray the images do not run.
    assert str(ray_requirement.specifier) == f"=={installed}", f"pyproject's {ray_requirement} must pin ray=={installed}"
    # ... and the same Python: rayproject/ray:<version>-py311 <-> python:3.11.
    assert worker["PYTHON_TAG"] == "py" + services["PYTHON_VERSION"].replace(".", "")
    assert instructions("Dockerfile.ray-worker", "FROM") == [
        "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${RAY_IMAGE_SUFFIX}"]


def test_torch_matches_the_makefile_pair():
    spec = re.search(r"TORCH_SPEC \?= torch==(\S+) torchvision==(\S+)", (REPO / "Makefile").read_text())
    for dockerfile in ("Dockerfile", "Dockerfile.ray-worker"):
        args = build_args(dockerfile)
        assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == spec.groups(), dockerfile


def test_services_image_runs_i2x_as_a_non_root_user():
    assert PYPROJECT["project"]["scripts"]["i2x"] == "i2x_explain:main"  # a guard, then i2x.cli:main
    assert instructions("Dockerfile", "ENTRYPOINT") == ['["i2x"]']
    (user,) = instructions("Dockerfile", "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER lets runAsNonRoot verify it"
    # The Deployments run as that same uid.
    base = (K8S / "base" / "training.yaml").read_text()
    assert f"runAsUser: {uid}" in base
    # Two variants from one file: the final stage picks the torch stage by VARIANT.
    froms = instructions("Dockerfile", "FROM")
    assert "torch-${VARIANT} AS runtime" in froms
    assert {"base AS torch-cpu", "base AS torch-cuda"} <= set(froms)
    for name in ("Dockerfile", "Dockerfile.ray-worker"):
        assert "USER" in (DOCKER / name).read_text()


def test_deploy_doc_builds_every_image_the_manifests_use_with_the_package_tag():
    doc = (REPO / "docs" / "DEPLOY.md").read_text().replace("\\\n", " ")
    builds = [line.strip() for line in doc.splitlines() if line.strip().startswith("docker build")]
    tags = {}
    for command in builds:
        words = shlex.split(command.replace("${REGISTRY}", "REGISTRY").replace("${VERSION}", VERSION))
        dockerfile = words[words.index("-f") + 1]
        assert (REPO / dockerfile).is_file(), dockerfile
        tag = words[words.index("-t") + 1]
        tags[tag.rsplit("/", 1)[-1]] = dockerfile
    assert f"VERSION={VERSION}" in doc, "DEPLOY.md must set VERSION to the package version"
    manifests = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    for image in set(re.findall(r"i2x/((?:services|ray-worker)[\w-]*):", manifests)):
        assert f"{image}:{VERSION}" in tags, f"DEPLOY.md does not build {image}:{VERSION}"
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in doc
