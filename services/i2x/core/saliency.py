"""Batched Grad-CAM at feature resolution (paper Eq. 1, restated in docs/METHOD.md).

Grad-CAM for class c at a layer with output A (d channels, h x w):
    alpha_k = mean_ij dy_c/dA_kij,   S = ReLU(sum_k alpha_k A_k).

Two paths, same result where both apply:

- CAM path (forward only). When A feeds global average pooling and then a single Linear layer
  whose output is the logits, y_c = sum_k W_ck mean_ij A_kij + b_c, so dy_c/dA_kij = W_ck/(h w) and
  S_c = ReLU(sum_k W_ck A_k / (h w)). One inference forward gives A (hooked), the logits and the
  confidences; the maps of all K classes are one einsum.
  How the path is chosen: the head is the Linear named in a registry of known
  (model class, layer) pairs (SmallCNN/block3, ResNet/layer4, Inception3/Mixed_7c -> ``fc``),
  else the model's last ``nn.Linear``. The structure is then *verified* on the first batch:
  the head's input must equal A averaged over (h, w), the head's output must equal the
  model's output, and A must not have been changed in place later in the forward pass. If either check fails the instance switches to the backward path for good.
- Backward path (any layer, any head). The hook replaces A by a leaf tensor that requires grad,
  with every parameter's requires_grad switched off for the call, so autograd runs from the
  logits back to A only (no parameter gradients, nothing upstream of A). One batched
  ``torch.autograd.grad`` per class asked for.

Maps are never upsampled; confidences and predictions come from the same forward pass.

Device: ``device`` is resolved by i2x.core.device (``auto``: CUDA when torch sees a GPU; a GPU
asked for where there is none is an error, never a silent CPU run). On CUDA the images are pinned
once and each batch is copied with non_blocking; the per-batch results stay on the device and are
copied to the host once at the end, so batches do not wait on each other. ``precision`` bf16/fp16
runs the forward pass under autocast; the Grad-CAM sums themselves (einsum, alpha * A) are taken in
fp32. The CAM structure check of the first batch always runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from i2x.core.device import autocast, batch_size_for, check_precision, resolve_device
from i2x.core.errors import Cancelled, InvalidArgument

# (type(model).__name__, target layer) -> name of the Linear head fed by GAP of that layer's output.
KNOWN_CAM_HEADS = {
    ("SmallCNN", "block3"): "fc",
    ("ResNet", "layer4"): "fc",
    ("Inception3", "Mixed_7c"): "fc",
}


@dataclass
class SaliencyResult:
    saliency: np.ndarray  # float32 (N, h, w), for the target class of each sample
    confidences: np.ndarray  # float32 (N, K), softmax
    predictions: np.ndarray  # int64 (N,)
    class_maps: np.ndarray | None = None  # float32 (N, K, h, w) when all_classes=True
    features: np.ndarray | None = None  # float16 (N, h, w, d) when return_features=True
    targets: np.ndarray | None = None  # int64 (N,), the class each saliency map explains


class GradCAM:
    """Grad-CAM at `target_layer` (a name from model.named_modules()).

    ``cam(images, targets="predicted")``: targets is "predicted", "label" (then pass labels),
    one class index, or one index per sample. `uses_cam_path` says which path is in use
    (None until the first call has verified the structure).
    device: cpu, cuda, cuda:N, mps or auto (i2x.core.device). batch_size: images per pass; 0 or
    None sizes it to the device's free memory. precision: fp32, bf16 or fp16 (autocast).
    """

    def __init__(self, model: nn.Module, target_layer: str, *, batch_size: int | None = 64,
                 device: str | torch.device = "auto", precision: str = "fp32"):
        from i2x.models import resolve_layer

        if batch_size is not None and batch_size < 0:
            raise InvalidArgument(f"batch_size must be >= 1 (0: sized to the device), got {batch_size}",
                                  field="batch_size")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = check_precision(precision)
        autocast(self.device, self.precision)  # fp16 on the CPU is refused here, not in the first batch
        self.model = model.to(self.device)
        self.target_layer = target_layer
        self.layer = resolve_layer(model, target_layer)
        self.batch_size = batch_size or None
        self.head = self._find_head()
        self.uses_cam_path: bool | None = None if self.head is not None else False

    # ------------------------------------------------------------------------------------ public

    def __call__(self, images: torch.Tensor, targets="predicted", labels=None, *, all_classes: bool = False,
                 return_features: bool = False) -> SaliencyResult:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise InvalidArgument("images must be a float tensor (N, C, H, W); decode them with i2x.data.to_tensor",
                                  field="images")
        n = images.shape[0]
        target_spec = self._target_spec(targets, labels, n)
        batch_size = self.batch_size or self._auto_batch_size(images)
        if self.device.type == "cuda" and images.device.type == "cpu" and not images.is_pinned():
            images = images.pin_memory()  # page-locked: the copies below can overlap the compute
        was_training = self.model.training
        self.model.eval()
        parts = []
        try:
            for start in range(0, n, batch_size):
                batch = images[start:start + batch_size].to(self.device, non_blocking=True)
                batch_targets = target_spec if isinstance(target_spec, str) else target_spec[start:start + len(batch)]
                parts.append(self._batch(batch, batch_targets, all_classes, return_features))
        finally:
            self.model.train(was_training)
        return _concat(parts, n)

    def _auto_batch_size(self, images: torch.Tensor) -> int:
        # Roughly 40 input-sized float32 tensors live per image during a ResNet forward pass.
        per_image = int(np.prod(images.shape[1:])) * 4 * 40
        return batch_size_for(self.device, per_image)

    # ----------------------------------------------------------------------------------- batches

    def _batch(self, x, targets, all_classes, return_features) -> dict:
        if self.uses_cam_path is not False:
            out = self._cam_batch(x, targets, all_classes, return_features)
            if out is not None:
                return out
        return self._backward_batch(x, targets, all_classes, return_features)

    def _cam_batch(self, x, targets, all_classes, return_features) -> dict | None:
        captured = {}

        verifying = self.uses_cam_path is None

        def on_layer(_module, _inputs, output):
            captured["A"] = output
            if verifying and isinstance(output, torch.Tensor):
                # A later in-place op (ResNet's `out += identity` after bn3) would make the GAP
                # check pass on values that are not this layer's output; compare against a copy.
                captured["A_copy"] = output.clone()

        def on_head(_module, inputs, output):
            captured["pooled"], captured["head_out"] = inputs[0], output

        handles = [self.layer.register_forward_hook(on_layer), self.head.register_forward_hook(on_head)]
        try:
            with torch.inference_mode():
                # The structure check compares at fp32 tolerances: the first batch runs without autocast.
                with autocast(self.device, "fp32" if verifying else self.precision):
                    logits = _logits(self.model(x))
                activation = captured.get("A")
                if self.uses_cam_path is None and not self._verify(activation, captured, logits):
                    self.uses_cam_path = False
                    return None
                self.uses_cam_path = True
                activation, logits = activation.float(), logits.float()
                weight = self.head.weight.float()  # (K, d)
                hw = activation.shape[2] * activation.shape[3]
                confidences = torch.softmax(logits, dim=1)
                predictions = logits.argmax(dim=1)
                target_idx = predictions if isinstance(targets, str) else targets.to(x.device)
                # S_n = ReLU(sum_k W[c_n, k] A_nk / (h w)): Grad-CAM with alpha = W/(hw).
                saliency = torch.relu(torch.einsum("nd,ndhw->nhw", weight[target_idx], activation) / hw)
                class_maps = (torch.relu(torch.einsum("kd,ndhw->nkhw", weight, activation) / hw)
                              if all_classes else None)
                return _on_device(saliency, confidences, predictions, class_maps,
                                  activation if return_features else None, target_idx)
        finally:
            for handle in handles:
                handle.remove()

    def _backward_batch(self, x, targets, all_classes, return_features) -> dict:
        captured = {}

        def on_layer(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise InvalidArgument(f"layer {self.target_layer!r} returns {type(output).__name__}, not a tensor; "
                                      "choose a layer whose output is a feature map (N, d, h, w)", field="target_layer")
            leaf = output.detach().requires_grad_(True)
            captured["A"] = leaf
            # Downstream in-place ops (ReLU(inplace=True)) must not overwrite the activation we keep.
            return leaf.clone()

        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        handle = self.layer.register_forward_hook(on_layer)
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            with torch.enable_grad():
                with autocast(self.device, self.precision):
                    logits = _logits(self.model(x))
                logits = logits.float()
                activation = captured["A"]
                if activation.ndim != 4:
                    raise InvalidArgument(f"layer {self.target_layer!r} outputs shape {tuple(activation.shape)}; "
                                          "Grad-CAM needs a feature map (N, d, h, w)", field="target_layer")
                predictions = logits.argmax(dim=1)
                target_idx = predictions if isinstance(targets, str) else targets.to(x.device)
                saliency = self._grad_cam(logits, activation, target_idx, retain=all_classes)
                class_maps = None
                if all_classes:
                    k = logits.shape[1]
                    class_maps = torch.stack([
                        self._grad_cam(logits, activation, torch.full_like(predictions, c), retain=c < k - 1)
                        for c in range(k)], dim=1)
            confidences = torch.softmax(logits.detach(), dim=1)
            return _on_device(saliency, confidences, predictions, class_maps,
                              activation.detach() if return_features else None, target_idx)
        finally:
            handle.remove()
            for p, flag in saved:
                p.requires_grad_(flag)

    @staticmethod
    def _grad_cam(logits, activation, target_idx, *, retain: bool) -> torch.Tensor:
        # Samples are independent in eval mode, so the gradient of the sum is each sample's gradient.
        score = logits.gather(1, target_idx.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, activation, retain_graph=retain)
        alpha = grad.float().mean(dim=(2, 3), keepdim=True)
        return torch.relu((alpha * activation.detach().float()).sum(dim=1))

    # ----------------------------------------------------------------------------------- helpers

    def _find_head(self) -> nn.Module | None:
        modules = dict(self.model.named_modules())
        known = KNOWN_CAM_HEADS.get((type(self.model).__name__, self.target_layer))
        if known and isinstance(modules.get(known), nn.Linear):
            return modules[known]
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        return linears[-1] if linears else None

    def _verify(self, activation, captured, logits) -> bool:
        """The CAM identity holds only if head(mean_hw(A)) is the model's output."""
        pooled, head_out = captured.get("pooled"), captured.get("head_out")
        if activation is None or pooled is None or activation.ndim != 4:
            return False
        if not torch.equal(captured["A_copy"], activation):
            return False
        gap = activation.mean(dim=(2, 3))
        pooled = pooled.reshape(pooled.shape[0], -1)
        if pooled.shape != gap.shape or head_out.shape != logits.shape:
            return False
        scale = float(gap.abs().max()) + 1e-6
        return bool(torch.allclose(pooled, gap, rtol=1e-4, atol=1e-5 * scale)
                    and torch.allclose(head_out, logits, rtol=1e-5, atol=1e-6))

    def _target_spec(self, targets, labels, n):
        if isinstance(targets, str):
            if targets == "predicted":
                return "predicted"
            if targets == "label":
                if labels is None:
                    raise InvalidArgument("targets='label' needs labels (one per image)", field="labels")
                values = np.asarray(labels)
            else:
                raise InvalidArgument(f"targets must be 'predicted', 'label', a class index or one index per image; "
                                      f"got {targets!r}", field="targets")
        elif isinstance(targets, (int, np.integer)):
            values = np.full(n, int(targets))
        else:
            values = np.asarray(targets)
        if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
            raise InvalidArgument(f"need one integer class per image ({n}), got shape {values.shape} "
                                  f"of {values.dtype}", field="targets")
        num_classes = self.head.out_features if self.head is not None else None
        if values.size and (values.min() < 0 or (num_classes is not None and values.max() >= num_classes)):
            raise InvalidArgument(f"target classes must be in 0..{(num_classes or 0) - 1}, got "
                                  f"{int(values.min())}..{int(values.max())}", field="targets")
        return torch.from_numpy(values.astype(np.int64))


def interpret_checkpoints(model: nn.Module, states: Iterable[tuple[int, dict]], images: torch.Tensor, *,
                          target_layer: str, targets="predicted", labels=None, batch_size: int = 64,
                          progress=None, cancel=None, all_classes: bool = False,
                          device: str = "auto", precision: str = "fp32") -> Iterator[tuple[int, SaliencyResult]]:
    """For each (step, state_dict): load it into `model` and yield (step, Grad-CAM of `images`).

    `images` is decoded once by the caller (i2x.data.to_tensor) and reused for every checkpoint;
    each checkpoint costs one batched pass over it.
    """
    from i2x.models import load_weights

    cam = GradCAM(model, target_layer, batch_size=batch_size, device=device, precision=precision)
    if cam.device.type == "cuda" and images.device.type == "cpu" and not images.is_pinned():
        images = images.pin_memory()  # once for every checkpoint, not once per call
    total = len(states) if hasattr(states, "__len__") else 0
    for done, (step, state) in enumerate(states, start=1):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"interpretation cancelled before step {step}")
        load_weights(model, state)
        yield step, cam(images, targets, labels, all_classes=all_classes)
        if progress is not None:
            progress(done, total, f"saliency at step {step}")


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.ndim == 2:
        return output
    logits = getattr(output, "logits", None)  # torchvision InceptionOutputs in training mode
    if isinstance(logits, torch.Tensor):
        return logits
    raise InvalidArgument(f"the model returns {type(output).__name__}; Grad-CAM needs logits of shape (N, K)",
                          field="model")


def _on_device(saliency, confidences, predictions, class_maps, activation, targets) -> dict:
    """One batch's results, still on the device (copied to the host once, by _concat)."""
    return {
        "saliency": saliency.detach().float(),
        "confidences": confidences.float(),
        "predictions": predictions.long(),
        "class_maps": None if class_maps is None else class_maps.detach().float(),
        "features": None if activation is None else activation.permute(0, 2, 3, 1).to(torch.float16),
        "targets": targets.long(),
    }


def _concat(parts: list[dict], n: int) -> SaliencyResult:
    if not parts:
        raise InvalidArgument("no images given; pass at least one image", field="images")
    joined = {}
    for key in ("saliency", "confidences", "predictions", "class_maps", "features", "targets"):
        values = [p[key] for p in parts]
        if values[0] is None:
            joined[key] = None
            continue
        tensor = values[0] if len(values) == 1 else torch.cat(values)
        joined[key] = tensor.cpu().numpy()  # the one device -> host copy of the call
    return SaliencyResult(**joined)
