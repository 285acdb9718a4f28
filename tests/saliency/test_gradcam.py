"""Grad-CAM: hand-computed CAM, fast path == backward path == naive definition == pytorch-grad-cam == captum."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from torch import nn

from i2x.core.errors import Cancelled, InvalidArgument
from i2x.core.saliency import GradCAM, interpret_checkpoints
from i2x.models import SmallCNN


class _GapLinear(nn.Module):
    """features = identity, so A is the input; GAP + Linear head with weights set by hand."""

    def __init__(self, weight):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _both_paths(model, layer, x, **kwargs):
    fast = GradCAM(model, layer)
    fast_result = fast(x, **kwargs)
    slow = GradCAM(model, layer)
    slow.uses_cam_path = False  # force the backward path
    return fast, fast_result, slow(x, **kwargs)


def test_cam_by_hand_on_both_paths():
    # A: channel 0 = [[1,2],[3,4]], channel 1 = [[0,1],[0,-1]]; W = [[1,2],[-1,0]], no bias.
    # GAP: (2.5, 0) -> logits (2.5, -2.5) -> predicted class 0.
    # S_0 = ReLU((1*A0 + 2*A1) / 4) = ReLU([[1,4],[3,2]] / 4) = [[0.25,1],[0.75,0.5]]
    # S_1 = ReLU((-1*A0 + 0*A1) / 4) = 0 everywhere.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])
    model = _GapLinear(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    fast, fast_result, slow_result = _both_paths(model, "features", x, all_classes=True)
    assert fast.uses_cam_path is True
    for result in (fast_result, slow_result):
        assert result.predictions.tolist() == [0]
        np.testing.assert_allclose(result.saliency[0], [[0.25, 1.0], [0.75, 0.5]], atol=1e-6)
        np.testing.assert_allclose(result.class_maps[0, 1], np.zeros((2, 2)), atol=1e-6)
        # softmax of (2.5, -2.5): 1 / (1 + e^-5) = 0.993307
        np.testing.assert_allclose(result.confidences[0], [0.993307, 0.006693], atol=1e-5)


def _naive_gradcam(model, layer_name, x, classes):
    """The definition, one sample at a time: alpha_k = mean_ij dy_c/dA_kij; S = ReLU(sum_k alpha_k A_k)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():  # in-place ReLUs would overwrite the kept activation
        if isinstance(module, nn.ReLU):
            module.inplace = False
    layer = dict(model.named_modules())[layer_name]
    maps = []
    for n in range(len(x)):
        kept = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: kept.update(A=out))
        y = model(x[n:n + 1])[0, int(classes[n])]
        handle.remove()
        (grad,) = torch.autograd.grad(y, kept["A"])
        alpha = grad[0].mean(dim=(1, 2))
        maps.append(torch.relu((alpha[:, None, None] * kept["A"][0]).sum(0)).detach())
    return torch.stack(maps).numpy()


@pytest.fixture(scope="module")
def trained_ish():
    torch.manual_seed(0)
    model = SmallCNN(width=4)
    # A few optimiser steps so the maps are not trivially zero; BN stats move too.
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(8, 1, 28, 28)
        loss = nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), torch.randn(6, 1, 28, 28)


def test_fast_equals_backward_equals_naive_at_the_gap_layer(trained_ish):
    model, x = trained_ish
    fast, fast_result, slow_result = _both_paths(model, "block3", x, all_classes=True, return_features=True)
    assert fast.uses_cam_path is True
    naive = _naive_gradcam(model, "block3", x, fast_result.predictions)
    scale = np.abs(naive).max()
    assert scale > 0
    np.testing.assert_allclose(fast_result.saliency, naive, atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(slow_result.saliency, naive, atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(fast_result.class_maps, slow_result.class_maps, atol=1e-5 * scale, rtol=1e-4)
    for c in (0, 9):
        np.testing.assert_allclose(fast_result.class_maps[:, c], _naive_gradcam(model, "block3", x, [c] * 6),
                                   atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_array_equal(fast_result.predictions, slow_result.predictions)
    np.testing.assert_allclose(fast_result.confidences, slow_result.confidences, rtol=1e-5, atol=1e-6)
    assert fast_result.features.shape == (6, 7, 7, 16) and fast_result.features.dtype == np.float16


def test_backward_path_at_an_inner_layer_followed_by_inplace_relu(trained_ish):
    model, x = trained_ish
    cam = GradCAM(model, "block2.1.1", batch_size=4)  # a BatchNorm whose output feeds ReLU(inplace=True)
    labels = np.arange(6) % 10
    result = cam(x, "label", labels)
    assert cam.uses_cam_path is False  # its output does not feed the GAP head
    assert result.saliency.shape == (6, 14, 14)  # feature resolution, not upsampled
    np.testing.assert_allclose(result.saliency, _naive_gradcam(model, "block2.1.1", x, labels), atol=1e-5, rtol=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # restored after the call
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients computed


def test_targets_fixed_class_and_per_sample(trained_ish):
    model, x = trained_ish
    cam = GradCAM(model, "block3")
    everything = cam(x, all_classes=True)
    fixed = cam(x, 3)
    np.testing.assert_allclose(fixed.saliency, everything.class_maps[:, 3], rtol=1e-5, atol=1e-10)
    per_sample = cam(x, np.array([0, 1, 2, 3, 4, 5]))
    np.testing.assert_allclose(per_sample.saliency, everything.class_maps[np.arange(6), np.arange(6)],
                               rtol=1e-5, atol=1e-10)


def test_agrees_with_pytorch_grad_cam_at_feature_resolution(trained_ish):
    from pytorch_grad_cam import GradCAM as LibraryGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = trained_ish
    ours = GradCAM(model, "block3")(x)
    targets = [ClassifierOutputTarget(int(c)) for c in ours.predictions]
    with LibraryGradCAM(model=model, target_layers=[model.block3]) as library:
        library(input_tensor=x, targets=targets)  # fills its activations and gradients
        activations = library.activations_and_grads.activations[0].cpu().numpy()
        gradients = library.activations_and_grads.gradients[0].cpu().numpy()
        # Its own map before scale_cam_image (which min-max normalises and resizes to the input).
        theirs = np.maximum(library.get_cam_image(x, model.block3, targets, activations, gradients), 0)
    np.testing.assert_allclose(ours.saliency, theirs, atol=1e-5 * np.abs(theirs).max(), rtol=1e-4)


def test_agrees_with_captum_layer_gradcam(trained_ish):
    from captum.attr import LayerGradCam

    model, x = trained_ish
    ours = GradCAM(model, "block3")(x)
    # relu_attributions=True applies Grad-CAM's ReLU; captum returns (N, 1, h, w) at layer resolution.
    theirs = LayerGradCam(model, model.block3).attribute(x, target=torch.from_numpy(ours.predictions),
                                                         relu_attributions=True).detach()[:, 0].numpy()
    np.testing.assert_allclose(ours.saliency, theirs, atol=1e-5 * np.abs(theirs).max(), rtol=1e-4)


class _FlattenHead(nn.Module):
    """Last Linear fed by a flatten, not by GAP: the CAM identity does not hold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_structure_verification_falls_back_to_backward():
    torch.manual_seed(1)
    model = _FlattenHead().eval()
    x = torch.randn(3, 1, 4, 4)
    cam = GradCAM(model, "conv")
    result = cam(x)
    assert cam.uses_cam_path is False
    np.testing.assert_allclose(result.saliency, _naive_gradcam(model, "conv", x, result.predictions), atol=1e-6)


class _InPlaceAfterLayer(nn.Module):
    """Like ResNet's bottleneck: the target layer's output is changed in place before GAP + Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)
        self.inplace = True

    def forward(self, x):
        out = self.conv(x)
        out = out.add_(x) if self.inplace else out + x  # a skip connection added in place
        return self.fc(out.mean(dim=(2, 3)))


def test_in_place_change_after_the_layer_is_not_taken_for_cam():
    torch.manual_seed(2)
    model = _InPlaceAfterLayer().eval()
    x = torch.randn(3, 1, 5, 5)
    cam = GradCAM(model, "conv")
    result = cam(x)
    assert cam.uses_cam_path is False
    reference = copy.deepcopy(model)
    reference.inplace = False
    np.testing.assert_allclose(result.saliency, _naive_gradcam(reference, "conv", x, result.predictions), atol=1e-6)


def test_interpret_checkpoints_one_pass_each(trained_ish):
    model, x = trained_ish
    other = SmallCNN(width=4).eval()
    states = [(10, copy.deepcopy(other.state_dict())), (20, copy.deepcopy(model.state_dict()))]
    progress = []
    results = list(interpret_checkpoints(SmallCNN(width=4), states, x, target_layer="block3",
                                         progress=lambda d, t, m: progress.append((d, t))))
    assert [step for step, _ in results] == [10, 20] and progress == [(1, 2), (2, 2)]
    np.testing.assert_allclose(results[0][1].saliency, GradCAM(other, "block3")(x).saliency, rtol=1e-6)
    np.testing.assert_allclose(results[1][1].saliency, GradCAM(model, "block3")(x).saliency, rtol=1e-6)
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        list(interpret_checkpoints(SmallCNN(width=4), states, x, target_layer="block3", cancel=event))


def test_bad_arguments(trained_ish):
    model, x = trained_ish
    with pytest.raises(InvalidArgument, match="no layer named 'layer4'") as err:
        GradCAM(model, "layer4")
    assert "block3" in str(err.value) and err.value.field == "target_layer"
    cam = GradCAM(model, "block3")
    with pytest.raises(InvalidArgument, match="needs labels"):
        cam(x, "label")
    with pytest.raises(InvalidArgument, match=r"0\.\.9"):
        cam(x, 10)
    with pytest.raises(InvalidArgument, match="one integer class per image"):
        cam(x, np.array([1, 2]))
    with pytest.raises(InvalidArgument, match="another architecture"):
        list(interpret_checkpoints(SmallCNN(width=4), [(1, SmallCNN(width=8).state_dict())], x,
                                   target_layer="block3"))
