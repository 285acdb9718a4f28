"""The distribution a user installs: its name (i2x-explain), version, license, typing marker and
console script, from a wheel built here; and what happens beside PyPI's unrelated `i2x` 1.1.4,
whose regular `i2x/__init__.py` can shadow our `i2x` namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def _pip(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling")  # the test extra installs it
    out = tmp_path_factory.mktemp("wheel")
    built = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT))
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("*.whl")
    return path


def _install(wheels: list[Path], target: Path) -> Path:
    done = _pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), *map(str, wheels))
    assert done.returncode == 0, done.stderr
    return target


def _isolated(paths: list[Path], code: str | None = None, script: Path | None = None, *args: str):
    """python -S: no site-packages .pth files, so the editable checkout is not on sys.path; the
    dependencies (grpc, numpy, ...) come from their own folders, after `paths`."""
    import google.protobuf
    import grpc
    import minio
    import numpy

    deps = {str(Path(m.__file__).resolve().parents[1]) for m in (grpc, numpy, minio)}
    deps.add(str(Path(google.protobuf.__file__).resolve().parents[2]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, paths), *sorted(deps)]))
    argv = [sys.executable, "-S"] + (["-c", code] if code else [str(script)]) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/")


def test_the_wheel_is_i2x_explain_with_version_license_and_typing(wheel):
    import tomllib

    from i2x.client import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__
    assert wheel.name == f"i2x_explain-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"i2x_explain-{__version__}.dist-info/METADATA").decode()
        license_text = z.read(f"i2x_explain-{__version__}.dist-info/licenses/LICENSE").decode()
        scripts = z.read(f"i2x_explain-{__version__}.dist-info/entry_points.txt").decode()
    assert "Name: i2x-explain\n" in meta and f"Version: {__version__}\n" in meta
    assert "License: Apache-2.0" in meta and "Apache License\n                           Version 2.0" in license_text
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "i2x/client/py.typed" in names and "i2x/cli.py" in names and "i2x_explain.py" in names
    assert not any(n == "i2x/__init__.py" for n in names)  # a namespace package: no __init__ of ours
    assert "i2x = i2x_explain:main" in scripts
    assert f"\n## {__version__}\n" in (ROOT / "CHANGELOG.md").read_text()


def test_the_installed_wheel_answers_version(wheel, tmp_path):
    from i2x.client import __version__

    target = _install([wheel], tmp_path / "site")
    run = _isolated([target], None, target / "bin" / "i2x", "--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"i2x {__version__} (i2x-explain)"
    where = _isolated([target], "import i2x.client; print(i2x.client.__file__)")
    assert where.stdout.strip().startswith(str(target)), where


@pytest.fixture(scope="module")
def foreign_i2x(tmp_path_factory) -> Path:
    """PyPI's unrelated i2x 1.1.4 (power-grid test systems), as a wheel."""
    out = tmp_path_factory.mktemp("foreign")
    got = _pip("download", "--no-deps", "-q", "-d", str(out), "i2x==1.1.4", timeout=240)
    wheels = list(out.glob("i2x-1.1.4-*.whl"))
    if got.returncode != 0 or not wheels:
        pytest.skip(f"PyPI's i2x 1.1.4 could not be downloaded: {got.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        assert "i2x/__init__.py" in z.namelist()  # a regular package: the shadowing case
    return wheels[0]


def test_beside_the_foreign_i2x_in_one_site_packages_ours_still_imports(wheel, foreign_i2x, tmp_path):
    """Both in one folder: their files merge under i2x/, their __init__ makes it a regular package
    whose folder holds our modules too, so I2X imports (and the CLI runs)."""
    target = _install([foreign_i2x, wheel], tmp_path / "site")
    run = _isolated([target], "import i2x; from i2x.client import Client; print(i2x.__version__, Client.__module__)")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1.1.4", "i2x.client.client"]
    assert _isolated([target], None, target / "bin" / "i2x", "--version").returncode == 0


def test_the_foreign_i2x_in_an_earlier_path_entry_hides_ours_and_the_cli_says_so(wheel, foreign_i2x, tmp_path):
    """In separate folders (an editable I2X, another site-packages) the regular package wins:
    `from i2x.client import Client` fails. The console script says what to do in one line."""
    ours = _install([wheel], tmp_path / "ours")
    theirs = _install([foreign_i2x], tmp_path / "theirs")
    run = _isolated([theirs, ours], "from i2x.client import Client")
    assert run.returncode != 0 and "No module named 'i2x.client'" in run.stderr
    cli = _isolated([theirs, ours], None, ours / "bin" / "i2x", "--version")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert "pip uninstall i2x" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
