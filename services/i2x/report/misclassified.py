"""The analysed pair's misclassified test images, with their assignment maps.

Assignment maps are stored only for the explanation set, so for a test image the report
computes one the way the clustering stage did (core/prototypes.py): the final checkpoint's
feature map at the saliency layer, projected with the stored PCA (components, mean) and each
position given to the nearest stored centroid. It needs torch and the final checkpoint; when
either is missing the report shows the images and says the maps are not available.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from i2x.report.run_data import RunData

MAX_PER_DIRECTION = 8


@dataclass
class Misclassified:
    true: int
    predicted: int
    test_indices: list[int]                     # into the test split
    images: np.ndarray                          # (n, H, W, C) uint8
    assignments: np.ndarray | None = None       # (n, h, w) prototype per position, when computed
    saliency: np.ndarray | None = None          # (n, h, w) Grad-CAM of the predicted class, final checkpoint
    confidence: np.ndarray | None = None        # (n,) the predicted class's confidence
    total: int = 0                              # how many test images go this way (shown: at most MAX_PER_DIRECTION)


@dataclass
class PairMisclassified:
    directions: list[Misclassified] = field(default_factory=list)
    note: str | None = None                     # why maps (or images) are missing, in words


def assign_to_prototypes(features: np.ndarray, components: np.ndarray, mean: np.ndarray,
                         centroids: np.ndarray) -> np.ndarray:
    """(n, h, w, d) features -> (n, h, w) nearest centroid after PCA: argmin_m |(z - mean) V^T - c_m|."""
    n, h, w, d = features.shape
    reduced = (features.reshape(-1, d).astype(np.float32) - mean) @ components.T
    distance = (reduced ** 2).sum(axis=1)[:, None] - 2 * reduced @ centroids.T + (centroids ** 2).sum(axis=1)[None]
    return distance.argmin(axis=1).reshape(n, h, w)


def _final_features(run: RunData, images: np.ndarray):
    """(features (n, h, w, d), saliency (n, h, w), confidences (n, K)) of the final checkpoint."""
    import torch.nn.functional as TF

    from i2x.core.saliency import GradCAM
    from i2x.data import to_tensor
    from i2x.models import ModelSpec, build_model, checkpoint_from_bytes, load_weights

    meta = run.meta
    spec = ModelSpec.from_dict(meta["model"])
    model = build_model(spec)
    # the checkpoint the prototypes were fitted on (clustering/prototypes.json), else the last one
    step = run.interpretation_steps[-1]
    if run.has("clustering", "prototypes.json"):
        step = int(run.store.get_json(run.key("clustering", "prototypes.json")).get("step", step))
    key = next((c.get("key") for c in run.checkpoints if int(c.get("step", -1)) == step and c.get("key")),
               run.key("checkpoints", f"step-{step:06d}.safetensors"))
    state, _ = checkpoint_from_bytes(run.store.get_bytes(key))
    load_weights(model, state)
    model.eval()
    x = to_tensor(images, meta["mean"], meta["std"])
    if spec.input_size and x.shape[-1] != spec.input_size:
        x = TF.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", align_corners=False)
    layer = meta.get("target_layer")
    if run.has("interpretation", "params.json"):
        layer = run.store.get_json(run.key("interpretation", "params.json")).get("target_layer", layer)
    result = GradCAM(model, layer)(x, "predicted", return_features=True)
    return result.features, result.saliency, result.confidences


def pair_misclassified(run: RunData, a: int, b: int) -> PairMisclassified:
    """Test images of class a predicted b and of b predicted a (at most MAX_PER_DIRECTION each)."""
    out = PairMisclassified()
    if not run.has("evaluation", "final.npz"):
        out.note = "the run has no evaluation/final.npz yet"
        return out
    final = run.store.get_npz(run.key("evaluation", "final.npz"))
    predictions, labels = final.get("predictions"), final.get("labels")
    if predictions is None or labels is None or len(predictions) == 0 or len(predictions) != len(labels):
        out.note = "evaluation/final.npz holds no per-image predictions"
        return out
    chosen = {}
    for true, predicted in ((a, b), (b, a)):
        where = np.flatnonzero((labels == true) & (predictions == predicted))
        chosen[(true, predicted)] = (where[:MAX_PER_DIRECTION], len(where))
    if not any(total for _, total in chosen.values()):
        return out
    try:
        from i2x.data import DatasetSpec, load_dataset

        test = load_dataset(DatasetSpec.from_dict(run.meta["dataset"])).test
    except Exception as error:  # noqa: BLE001 - the data may live where the report cannot read it
        out.note = f"the test split could not be loaded ({type(error).__name__}: {error})"
        return out
    if len(test.labels) != len(labels) or not np.array_equal(np.asarray(test.labels), labels):
        out.note = "the test split loaded now differs from the one evaluated; its images are not shown"
        return out
    for (true, predicted), (where, total) in chosen.items():
        out.directions.append(Misclassified(true, predicted, where.tolist(), np.asarray(test.images[where]),
                                            total=total))
    shown = np.concatenate([d.images for d in out.directions if len(d.images)])
    if not run.has("clustering", "prototypes.npz"):
        out.note = "the run has no clustering/prototypes.npz, so the images have no assignment maps"
        return out
    try:
        features, saliency, confidences = _final_features(run, shown)
        stored = run.store.get_npz(run.key("clustering", "prototypes.npz"))
        maps = assign_to_prototypes(features, stored["pca_components"], stored["pca_mean"], stored["centroids"])
    except Exception as error:  # noqa: BLE001 - no torch, no checkpoint: say so, show the images
        out.note = f"assignment maps could not be computed ({type(error).__name__}: {error})"
        return out
    start = 0
    for direction in out.directions:
        n = len(direction.images)
        direction.assignments = maps[start:start + n]
        direction.saliency = saliency[start:start + n]
        direction.confidence = confidences[start:start + n, direction.predicted]
        start += n
    return out
