"""bench/bench_gpu.py works: its --smoke shape on the CPU, and a clear exit where there is no CUDA."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_gpu.py"
pytestmark = pytest.mark.timeout(300)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the bench would run for real")
def test_without_cuda_it_exits_with_a_clear_message(capsys):
    assert _bench().main([]) == 2
    err = capsys.readouterr().err
    assert "bench_gpu: torch sees no CUDA GPU" in err and "--smoke" in err


def test_smoke_shape_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert _bench().main(["--smoke", "--images", "30", "--skip", "ray", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["shape"]["images"] == 30
    tp = figures["throughput"]
    n = 30 * 3
    for precision in ("fp32", "bf16"):
        row = tp[precision]
        assert row["gradcam_images_per_s"] == pytest.approx(n / row["gradcam_s"])
        assert row["throughput_vs_inference"] == pytest.approx(row["plain_s"] / row["gradcam_s"])
    assert -1.0 <= tp["bf16"]["pearson_vs_fp32"] <= 1.0
    analysis = figures["analysis"]
    parts = sum(analysis[k] for k in ("interpretation_s", "prototypes_s", "clusters_s", "explanation_s"))
    assert parts <= analysis["total_s"]
    assert [p["device"] for p in analysis["placement"]] == ["cpu"] * analysis["checkpoints"]
    printed = capsys.readouterr().out
    assert "whole analysis (bf16)" in printed and "target < 60 s" in printed
