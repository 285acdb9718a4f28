"""`i2x analyze`, `i2x runs` and `i2x jobs` as subprocesses against real services: plain
timestamped lines without control codes off a terminal, live bars in one (a pty), --json for
scripts, a spec that differs from the run's refused, a missing local checkpoint refused before
anything is created, and delete removing every artifact."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from conftest import start_services

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CONTROL = re.compile(r"[\x1b\r\x08]")  # escape sequences, carriage returns, backspaces


@pytest.fixture(scope="module")
def services(tmp_path_factory, ray_local, tiny_dataset):
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("cli-store"))
    running = start_services(store)
    env = dict(os.environ, **{f"I2X_{s.upper()}_ADDR": running.address(s) for s in running.ports})
    env.pop("I2X_STORE", None)  # the CLI learns the store from the services
    yield running, store, env
    running.stop()


def analyze(run_id: str, dataset: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "i2x.cli", "analyze", run_id, "--dataset-kind", "npz", "--dataset-root", dataset,
            "--num-classes", "3", "--preset", "tiny", "--prototypes", "4", "--pca-components", "4",
            "--min-cluster-size", "3", "--pair", "1", "2", "--no-report", *extra]


def run(argv, env, cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=240, **kwargs)


def in_pty(argv, env, cwd) -> tuple[int, str]:
    """Run with stdout and stderr on a terminal; what the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a terminal's size
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=240), b"".join(chunks).decode(errors="replace")


def test_off_a_terminal_plain_lines_in_a_terminal_bars_and_json_for_scripts(services, tiny_dataset, tmp_path):
    _, store, env = services
    first = run(analyze("cli", tiny_dataset), env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert not CONTROL.search(first.stdout + first.stderr), repr(first.stderr[:500])
    progress = first.stderr.strip().splitlines()
    assert progress and all(re.match(r"\d\d:\d\d:\d\d \w+ ", line) for line in progress), progress
    for stage in ("train", "interpret", "prototypes", "clusters", "explain"):
        assert any(re.match(rf"\S+ {stage} succeeded in \d+\.\d s", line) for line in progress), (stage, progress)
    # the summary is i2x.core.narrative's: the true most confused pair, then the pair asked for
    assert re.search(r"Most confused pair on the test split: '\d' / '\d', \d+ test confusions", first.stdout), first.stdout
    assert re.search(r"Analysed pair: '1' / '2' \(\d+ test confusions\), the pair you asked for", first.stdout), first.stdout

    status, screen = in_pty(analyze("cli", tiny_dataset), env, tmp_path)  # resumes: every stage is done
    assert status == 0, screen
    assert "\r" in screen and re.search(r"explain\s*:.*1/1|explain\s*:.*100%", screen), screen[-800:]

    scripted = run(analyze("cli", tiny_dataset, "--json", "--quiet"), env, tmp_path)
    assert scripted.returncode == 0 and scripted.stderr == "", scripted.stderr
    result = json.loads(scripted.stdout)
    explanation = store.get_json("runs/cli/explanation/explanation.json")
    assert result["pair"]["classes"] == [1, 2] and result["store"] == store.url
    assert result["steps"] == [c["step"] for c in store.get_json("runs/cli/checkpoints/index.json")["checkpoints"]]
    assert result["explanation_key"] == "runs/cli/explanation/explanation.json" and explanation["per_class"]
    assert store.get_json("runs/cli/run.json")["i2x_version"] == __import__("i2x.client").client.__version__


def test_a_different_spec_or_a_missing_checkpoint_file_is_refused(services, tiny_dataset, tmp_path):
    _, store, env = services
    if not store.exists("runs/cli/run.json"):
        pytest.skip("needs the first test's run")
    other = run(analyze("cli", tiny_dataset, "--epochs", "9"), env, tmp_path)
    assert other.returncode == 2 and "overwrite" in other.stderr and "Traceback" not in other.stderr, other.stderr
    missing = run([sys.executable, "-m", "i2x.cli", "analyze", "byo", "--checkpoint", "3=./ckpt/step3.safetensors",
                   "--dataset-kind", "npz", "--dataset-root", tiny_dataset, "--num-classes", "3"], env, tmp_path)
    assert missing.returncode == 2 and "no such local file" in missing.stderr, missing.stderr
    assert not store.exists("runs/byo/run.json")  # nothing half-created


def test_runs_and_jobs_commands(services, tmp_path):
    _, store, env = services
    if not store.exists("runs/cli/run.json"):
        pytest.skip("needs the first test's run")
    listed = run([sys.executable, "-m", "i2x.cli", "runs", "list", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["run_id"] == "cli"]
    assert row["stages"][:2] == ["trained", "explained"] and row["model"]["num_classes"] == 3
    jobs = run([sys.executable, "-m", "i2x.cli", "jobs", "list", "--run", "cli", "--json"], env, tmp_path)
    assert jobs.returncode == 0, jobs.stderr
    kinds = {(j["service"], j["kind"]) for j in json.loads(jobs.stdout)}
    assert {("training", "train"), ("interpretation", "interpret"), ("explanation", "explain")} <= kinds
    job_id = json.loads(jobs.stdout)[0]["job_id"]
    shown = run([sys.executable, "-m", "i2x.cli", "jobs", "show", job_id], env, tmp_path)
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout, shown.stdout + shown.stderr

    refused = run([sys.executable, "-m", "i2x.cli", "runs", "delete", "cli"], env, tmp_path, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "--yes" in refused.stderr and store.exists("runs/cli/run.json")
    deleted = run([sys.executable, "-m", "i2x.cli", "runs", "delete", "cli", "--yes"], env, tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert store.list("runs/cli/") == [] and not (store.root / "runs" / "cli").exists()
    assert [k for k in store.list("jobs/") if k.endswith(".json") and store.get_json(k).get("run_id") == "cli"] == []
    gone = run([sys.executable, "-m", "i2x.cli", "runs", "show", "cli"], env, tmp_path)
    assert gone.returncode == 2 and "no run 'cli'" in gone.stderr, gone.stderr
