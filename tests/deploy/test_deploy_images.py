"""The Dockerfiles (they cannot be built here) agree with the package, the Ray the services are
tested with, the manifests and docs/DEPLOY.md."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from k8s_manifests import DOCKER, K8S, OVERLAYS, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "client/i2x/client/_version.py").read_text()).group(1)


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
    # Every extra that names Ray (the bench extra's ray[serve,data] for bench/bench_pool_options.py) pins the same.
    others = [r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in map(Requirement, extra)
              if r.name == "ray"]
    assert len(others) >= 2 and {str(r.specifier) for r in others} == {f"=={installed}"}, others
    # ... and the same Python: rayproject/ray:<version>-py311 <-> python:3.11.
    assert worker["PYTHON_TAG"] == "py" + services["PYTHON_VERSION"].replace(".", "")
    # Both Ray worker variants (cpu, cuda) from the same Ray and Python tag.
    assert instructions("Dockerfile.ray-worker", "FROM") == [
        "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu AS ray-cpu",
        "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG} AS ray-cuda",
        "ray-${VARIANT} AS runtime"]
    # torch's CUDA wheels are of the CUDA that the Ray CUDA image carries.
    assert "ENV I2X_TORCH_INDEX_URL=https://download.pytorch.org/whl/${CUDA_TAG}" in (
        DOCKER / "Dockerfile.ray-worker").read_text()


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


IMAGES = ("Dockerfile", "Dockerfile.ray-worker")


def stages(dockerfile: str) -> list[tuple[str, list[str]]]:
    """(FROM line, instructions) per stage; the lines before the first FROM under ''."""
    text = (DOCKER / dockerfile).read_text().replace("\\\n", " ")
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            out.append((line[5:], []))
        else:
            out[-1][1].append(line)
    return out


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_every_build_arg_a_stage_uses_is_declared_in_that_stage(dockerfile):
    """An ARG goes out of scope at the end of its stage: a stage that uses ${X} without its own
    `ARG X` (or an ENV X it inherits) gets an empty X, e.g. `pip install torch==`."""
    parts = stages(dockerfile)
    global_args = {m for line in parts[0][1] for m in re.findall(r"^ARG\s+(\w+)", line)}
    env: dict[str, set[str]] = {}  # stage name -> ENV names it carries to the stages built FROM it
    for source, lines in parts[1:]:
        image, _, name = source.partition(" AS ")
        used_in_from = set(re.findall(r"\$\{(\w+)\}", image))
        assert used_in_from <= global_args, f"{dockerfile}: FROM {source} uses {used_in_from - global_args}"
        # FROM ray-${VARIANT}: what every stage it may name (ray-cpu, ray-cuda) sets.
        pattern = re.escape(image.strip()).replace(r"\$\{VARIANT\}", r"\w+")
        parents = [names for stage, names in env.items() if re.fullmatch(pattern, stage)]
        known = set.intersection(*parents) if parents else set()
        for line in lines:
            keyword, _, rest = line.partition(" ")
            if keyword == "ARG":
                known.add(re.match(r"(\w+)", rest).group(1))
                continue
            if keyword == "ENV":
                known.update(re.findall(r"(\w+)=", rest))
            if keyword in ("RUN", "COPY", "ENV", "WORKDIR"):
                used = set(re.findall(r"\$\{(\w+)", rest)) - {"HOME"}
                assert used <= known, f"{dockerfile} stage {source!r}: {line!r} uses {used - known} undeclared"
        env[name.strip()] = {v for v in known if any(line.startswith("ENV") and v + "=" in line for line in lines)}


def dockerignore_includes(path: str) -> bool:
    """Whether the build context keeps `path` under the Dockerfiles' .dockerignore ('*' then '!kept')."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the ignore file starts by excluding everything"
    kept = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    return any(path == k or path.startswith(k + "/") for k in kept)


def test_dockerignore_keeps_what_the_images_copy_and_nothing_else():
    # BuildKit reads <Dockerfile>.dockerignore, other builders the root one: the same text.
    root = (REPO / ".dockerignore").read_text()
    for name in IMAGES:
        assert (DOCKER / f"{name}.dockerignore").read_text() == root, name
    for name in IMAGES:
        for copy in instructions(name, "COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            for source in words[:-1]:
                assert dockerignore_includes(source), f"{name} copies {source}, which .dockerignore drops"
    for heavy in (".venv", "test-output", "tests", ".git", "bench"):
        assert not dockerignore_includes(heavy), heavy


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_dependencies_are_installed_before_the_sources_are_copied(dockerfile):
    """Layer caching: a source change rebuilds only the package's layer, not the dependencies'."""
    lines = [line for _, stage in stages(dockerfile) for line in stage]
    deps = next(i for i, line in enumerate(lines) if "pip-install" in line and " deps " in line)
    package = next(i for i, line in enumerate(lines) if "pip-install" in line and " package " in line)
    copies = {i: line for i, line in enumerate(lines) if line.startswith("COPY")}
    before = " ".join(line for i, line in copies.items() if i < deps)
    assert "pyproject.toml" in before and "services" not in before and "client" not in before
    assert any("services" in line for i, line in copies.items() if deps < i < package)


def _pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10).close()
        return True
    except OSError:
        return False


def _resolve(step: str, args: dict[str, str], report, *extra: str) -> dict:
    """deploy/docker/pip-install.sh STEP as the Dockerfile runs it, with --dry-run --report, from
    PyPI alone (no local pip config, caps or wheel folders), by this interpreter (the images')."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    pip_args = ["--dry-run", "--quiet", "--ignore-installed", "--report", str(report),
                "--index-url", "https://pypi.org/simple", *extra]
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):  # the system's CAs (a TLS-inspecting proxy)
        pip_args += ["--cert", "/etc/ssl/certs/ca-certificates.crt"]
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ARGS=" ".join(pip_args), PATH=os.path.dirname(sys.executable)
               + os.pathsep + env.get("PATH", ""), RAY_VERSION=args["RAY_VERSION"],
               TORCH_VERSION=args["TORCH_VERSION"], TORCHVISION_VERSION=args["TORCHVISION_VERSION"])
    proc = subprocess.run(["sh", str(DOCKER / "pip-install.sh"), step, str(REPO)], env=env, capture_output=True,
                          text=True, timeout=420)
    assert proc.returncode == 0, f"pip-install.sh {step} does not resolve:\n{proc.stderr[-3000:]}"
    return {canonicalize_name(item["metadata"]["name"]): item for item in json.loads(report.read_text())["install"]}


_RESOLVED: dict[tuple, dict] = {}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("dockerfile", IMAGES)
def test_image_install_resolves_from_pypi_as_its_dockerfile_runs_it(dockerfile, tmp_path):
    """The install each image runs, resolved for real (pip --dry-run --report) from PyPI: the
    same script, constraints and build args. Images whose args agree share one resolution.
    The base image's own packages (torch in the services image, Ray's in rayproject/ray) are
    not there: --ignore-installed resolves them from PyPI at the pinned versions instead (PyPI's
    torch 2.14.1 is the CUDA build: its dependencies are a superset of the CPU build's)."""
    args = build_args(dockerfile)
    python = args.get("PYTHON_VERSION") or args["PYTHON_TAG"].removeprefix("py").replace("3", "3.", 1)
    # pip resolves for the interpreter and platform it runs on: those of the images, or skip.
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != python or platform.machine() != "x86_64" \
            or sys.platform != "linux":
        pytest.skip(f"resolving the image install needs Python {python} on x86_64 Linux, as in the image")
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable: the image install cannot be resolved here")
    key = tuple(args[k] for k in ("RAY_VERSION", "TORCH_VERSION", "TORCHVISION_VERSION"))
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve("deps", args, tmp_path / "deps.json")
    deps = _RESOLVED[key]
    assert deps["ray"]["metadata"]["version"] == args["RAY_VERSION"]
    assert deps["torch"]["metadata"]["version"] == args["TORCH_VERSION"]
    assert deps["torchvision"]["metadata"]["version"] == args["TORCHVISION_VERSION"]
    # ray[default]'s extras came with it (the dashboard and autoscaler KubeRay needs).
    assert {"aiohttp", "prometheus-client", "py-spy"} <= set(deps)
    # The package step: the source tree builds (name-agnostic `SRC[server]`), its requirements
    # are exactly the ones the deps step resolved, so that step downloads nothing new.
    package = _resolve("package", args, tmp_path / "package.json", "--no-deps")
    (built,) = package.values()
    assert built["metadata"]["version"] == VERSION
    required = {canonicalize_name(Requirement(r).name) for r in built["metadata"]["requires_dist"]
                if Requirement(r).marker is None or Requirement(r).marker.evaluate({"extra": "server"})}
    assert required <= set(deps), required - set(deps)
