"""`i2x` command: the parser, flags over settings, and `i2x up` end to end (start, listen, Ctrl-C)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest


def test_parser_has_serve_up_analyze_and_flags_override_settings(monkeypatch):
    from i2x import cli, config

    parser = cli.build_parser()
    args = parser.parse_args(["serve", "clustering", "--port", "6000", "--store", "/tmp/x", "--ray-address", "auto"])
    assert args.service == "clustering" and args.func is cli.cmd_serve
    monkeypatch.setattr(os, "environ", dict(os.environ, I2X_STORE="/from/env", I2X_PORT="1234"))  # a private copy
    cli._apply_flags(args)
    assert config.get("I2X_STORE") == "/tmp/x"        # the flag wins over the environment
    assert config.get("I2X_PORT") == "6000"
    assert config.get("I2X_RAY_ADDRESS") == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "nonsense"])
    assert parser.parse_args(["analyze", "r1", "--pair", "2", "7"]).pair == [2, 7]
    assert parser.parse_args(["up", "--base-port", "0"]).func is cli.cmd_up


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Ray's head processes, its workers, the services)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


MYNETS = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def build(in_channels, num_classes):
    return Net(in_channels, num_classes)
"""


def _image_folder(root) -> str:
    """<root>/<class>/<image>.png: three classes of coloured squares, 16x16 RGB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            image = rng.integers(0, 40, (16, 16, 3), dtype=np.uint8)
            image[2 + 4 * c:8 + 4 * c, 2:8, c] = 230
            Image.fromarray(image).save(root / name / f"{i}.png")
    return str(root)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_analyzes_a_custom_model_on_an_image_folder_and_sigterm_stops_the_whole_tree(tmp_path):
    """The README's path for your own model: PYTHONPATH and I2X_MODEL_FACTORIES on `i2x up` reach
    the services and their Ray workers; `i2x analyze --arch custom --factory ...` on a folder of images."""
    from i2x.client import Client

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "mynets.py").write_text(MYNETS)
    images = _image_folder(tmp_path / "images")
    env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1", I2X_GRACE_SECONDS="1", I2X_MODEL_FACTORIES="mynets:build",
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "code"), os.environ.get("PYTHONPATH")])))
    up = subprocess.Popen([sys.executable, "-m", "i2x.cli", "up", "--store", str(tmp_path / "store"),
                           "--base-port", "0", "--ray-cpus", "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines, addresses = [], {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.match(r"\s+(training|interpretation|clustering|explanation)\s+(\S+:\d+)$", line.rstrip())
            if match:
                addresses[match.group(1)] = match.group(2)
            if "Ctrl-C stops everything" in line:
                break
        assert len(addresses) == 4, "".join(lines)
        assert len(set(addresses.values())) == 4
        with Client(**addresses, retries=0) as client:
            assert client.list_runs() == []
            with pytest.raises(Exception):
                client.get_run("missing")
            info = client.server_info("clustering")
            assert info.service == "clustering" and info.store_url == f"file://{tmp_path / 'store'}"

        # the user's side: a client without the module on its path, only the services have it
        user_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "I2X_STORE")}
        user_env.update({f"I2X_{s.upper()}_ADDR": a for s, a in addresses.items()})
        analyzed = subprocess.run(
            [sys.executable, "-m", "i2x.cli", "analyze", "mine", "--arch", "custom", "--factory", "mynets:build",
             "--in-channels", "3", "--num-classes", "3", "--input-size", "16", "--target-layer", "features.3",
             "--dataset-kind", "imagefolder", "--dataset-root", images, "--dataset-image-size", "16",
             "--explanation-fraction", "0.5", "--preset", "tiny", "--prototypes", "4", "--pca-components", "4",
             "--min-cluster-size", "3", "--no-report", "--json", "--quiet"],
            capture_output=True, text=True, env=user_env, cwd=tmp_path, timeout=200)
        assert analyzed.returncode == 0, analyzed.stderr + "".join(lines)
        result = __import__("json").loads(analyzed.stdout)
        assert set(result["pair"]["names"]) <= {"red", "green", "blue"} and len(result["steps"]) >= 2

        tree = _descendants(up.pid)
        assert len(tree) >= 5, tree  # the four services and at least Ray's GCS
        up.send_signal(signal.SIGTERM)  # Ray's own SIGTERM handler must not win
        output, _ = up.communicate(timeout=60)
        assert up.returncode == 0, output
        assert "i2x up: stopped" in output and "Traceback" not in output, output
        time.sleep(1)
        assert [pid for pid in tree if _alive(pid)] == [], "orphans left: " + output
    finally:
        if up.poll() is None:
            up.kill()
