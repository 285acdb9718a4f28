"""Device choice (i2x.core.device) and mixed precision of Grad-CAM, on the CPU this machine has.

The GPU itself is exercised by bench/bench_gpu.py; here: the resolver's answers, the refusal to
compute on the CPU when a GPU was asked for, and bf16 autocast maps against fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from i2x.core import device as dev
from i2x.core.errors import FailedPrecondition, InvalidArgument
from i2x.core.saliency import GradCAM
from i2x.models import SmallCNN


def test_device_spelling():
    assert dev.check_device(" CUDA:1 ") == "cuda:1"
    for good in ("cpu", "auto", "cuda", "mps"):
        assert dev.check_device(good) == good
    for bad in ("gpu", "cuda:", "cuda:x", "", None, "tpu"):
        with pytest.raises(InvalidArgument, match="device must be cpu, cuda, cuda:N, mps or auto") as info:
            dev.check_device(bad, field="params.device")
        assert info.value.field == "params.device"


def test_resolve_cpu_and_auto():
    assert dev.resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert dev.resolve_device("auto") == expected


def test_gpu_asked_where_torch_sees_none_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert dev.resolve_device("auto") == torch.device("cpu")  # auto may use the CPU ...
    with pytest.raises(FailedPrecondition, match="torch sees no CUDA GPU on this node") as info:
        dev.resolve_device("cuda", field="params.device")  # ... an explicit GPU never does
    assert info.value.field == "params.device"
    assert "CUDA_VISIBLE_DEVICES=''" in info.value.message
    with pytest.raises(FailedPrecondition, match="no CUDA GPU"):
        GradCAM(SmallCNN(width=2), "block3", device="cuda:0")


def test_gpu_index_beyond_the_visible_ones(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(FailedPrecondition, match=r"has 2 visible GPU\(s\) \(cuda:0..cuda:1\)"):
        dev.resolve_device("cuda:2")


def test_precision_checks():
    with pytest.raises(InvalidArgument, match="precision must be one of fp32, bf16, fp16"):
        GradCAM(SmallCNN(width=2), "block3", device="cpu", precision="int8")
    with pytest.raises(InvalidArgument, match="fp16 needs a GPU; use bf16 on the CPU"):
        GradCAM(SmallCNN(width=2), "block3", device="cpu", precision="fp16")


def test_batch_size_sized_to_the_device_is_the_default_on_cpu():
    assert dev.batch_size_for(torch.device("cpu"), 10**6) == 64
    cam = GradCAM(SmallCNN(width=2), "block3", device="cpu", batch_size=0)
    assert cam.batch_size is None
    assert cam(torch.randn(3, 1, 28, 28)).saliency.shape == (3, 7, 7)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # a few steps so the maps are not those of a random initialisation
        x = torch.randn(16, 1, 28, 28)
        loss = nn.functional.cross_entropy(model(x), torch.arange(16) % 10)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), torch.randn(40, 1, 28, 28)


@pytest.mark.parametrize("cam_path", [True, False])
def test_bf16_autocast_maps_correlate_with_fp32(model_and_images, cam_path):
    model, x = model_and_images
    results = {}
    for precision in ("fp32", "bf16"):
        cam = GradCAM(model, "block3", batch_size=16, device="cpu", precision=precision)
        if not cam_path:
            cam.uses_cam_path = False
        results[precision] = cam(x, targets="predicted")
        assert cam.uses_cam_path is cam_path
    full, half = results["fp32"], results["bf16"]
    # batches 2 and 3 ran under bf16 (the first batch verifies the CAM structure in fp32)
    rest = slice(16, None)
    assert _pearson(full.saliency[rest], half.saliency[rest]) >= 0.999
    assert not np.array_equal(full.saliency[rest], half.saliency[rest])  # autocast really changed the numbers
    per_image = [_pearson(full.saliency[i], half.saliency[i]) for i in range(16, 40) if full.saliency[i].std() > 0]
    assert min(per_image) >= 0.99
    assert half.saliency.dtype == np.float32 and half.confidences.dtype == np.float32
    np.testing.assert_allclose(half.confidences.sum(1), 1.0, atol=1e-5)


def test_auto_in_a_ray_worker_granted_a_gpu_never_falls_back_to_the_cpu(monkeypatch):
    """Ray granted GPU 3 but torch sees none (a broken driver, a CPU build of torch): auto fails."""
    monkeypatch.setattr(dev, "ray_granted_gpus", lambda: ["3"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FailedPrecondition, match=r"'auto' but torch sees no CUDA GPU on this node \(Ray granted GPU 3") as info:
        dev.resolve_device("auto", field="params.device")
    assert info.value.field == "params.device"
    assert dev.resolve_device("cpu") == torch.device("cpu")  # an explicit cpu is still the CPU
