"""Every user error of the `i2x` command: one or two lines on stderr, exit status 2, no traceback
(--debug shows it), and nothing created on disk. The CLI runs as a subprocess, as a person runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(120)


def i2x(*args: str, cwd, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "i2x.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60,
                          env=dict(os.environ, **(env or {})))


def user_error(run: subprocess.CompletedProcess, *needles: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    lines = run.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, run.stderr
    for needle in needles:
        assert needle in run.stderr, (needle, run.stderr)
    return run.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_report_without_run_or_on_a_typo_creates_nothing(tmp_path):
    (tmp_path / "i2x-data").mkdir()
    user_error(i2x("report", "./i2x-data", cwd=tmp_path), "--run RUN_ID")
    user_error(i2x("report", "./typo", "--run", "r", cwd=tmp_path), "no store at", "typo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2x-data"]  # ./typo was not created
    debug = i2x("report", "./typo", "--run", "r", "--debug", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # --debug shows where


def test_no_service_listening_names_i2x_up_and_i2x_endpoint_at_once(tmp_path):
    start = time.monotonic()
    run = i2x("analyze", "r1", cwd=tmp_path, env={"I2X_TRAINING_ADDR": f"127.0.0.1:{free_port()}"})
    user_error(run, "i2x up", "I2X_ENDPOINT")
    assert time.monotonic() - start < 8  # not the 13 s of UNAVAILABLE retries
    user_error(i2x("jobs", "list", "--endpoint", "127.0.0.1", cwd=tmp_path,
                   env={"I2X_TRAINING_ADDR": f"127.0.0.1:{free_port()}"}), "i2x up")


def test_up_on_a_busy_port_names_base_port_and_leaves_no_store(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = i2x("up", "--store", str(tmp_path / "new-store"), "--base-port", str(port), cwd=tmp_path)
    user_error(run, "--base-port", str(port))
    assert not (tmp_path / "new-store").exists()


BLOCK_SERVER_EXTRA = ("import sys; from i2x.cli_errors import SERVER_MODULES\n"
                      "for m in SERVER_MODULES: sys.modules[m] = None  # as with `pip install i2x-explain` alone\n"
                      "from i2x.cli import main; sys.argv[0] = 'i2x'; sys.exit(main(sys.argv[1:]))")


def test_without_the_server_extra_the_install_command_is_named(tmp_path):
    hint = "pip install 'i2x-explain[server]'"
    user_error(i2x("up", "--base-port", "0", "--store", str(tmp_path / "s"), cwd=tmp_path, code=BLOCK_SERVER_EXTRA),
               hint)
    assert not (tmp_path / "s").exists()
    (tmp_path / "store").mkdir()
    user_error(i2x("report", "store", "--run", "r", cwd=tmp_path, code=BLOCK_SERVER_EXTRA), hint)
    user_error(i2x("demo", "--in-process", "--store", str(tmp_path / "store"), cwd=tmp_path,
                   code=BLOCK_SERVER_EXTRA), hint)


def test_bad_flags_and_version(tmp_path):
    user_error(i2x("analyze", "r1", "--checkpoint", "forty=x.safetensors", cwd=tmp_path), "STEP=PATH_OR_KEY")
    user_error(i2x("runs", "show", "r1", "--store", "./nowhere", cwd=tmp_path), "no store at")
    assert not (tmp_path / "nowhere").exists()
    from i2x.client import __version__

    version = i2x("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"i2x {__version__} (i2x-explain)"


def test_a_factory_that_does_not_import_names_the_process():
    from i2x.core.errors import InvalidArgument
    from i2x.models import ModelSpec, build_model

    with pytest.raises(InvalidArgument, match=r"this process \(pid \d+, host .+\) cannot import 'no_such_nets'"):
        build_model(ModelSpec(arch="custom", factory="no_such_nets:build"))
