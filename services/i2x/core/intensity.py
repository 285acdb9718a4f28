"""Prototype intensity (Eq. 4): saliency summed over the positions assigned to each prototype."""

from __future__ import annotations

import numpy as np

from i2x.core.errors import InvalidArgument


def prototype_intensity(saliency, assignments, n_prototypes: int) -> np.ndarray:
    """I[..., n, m] = sum of S[..., n, i, j] over positions (i, j) with A[n, i, j] == m.

    saliency: (N, h, w) or (T, N, h, w), any float dtype (float16 is summed in float64).
    assignments: (N, h, w) integers in [0, n_prototypes).
    Returns float32 (N, M) or (T, N, M).
    """
    if isinstance(n_prototypes, bool) or not isinstance(n_prototypes, (int, np.integer)) or n_prototypes < 1:
        raise InvalidArgument(f"must be a positive integer, got {n_prototypes!r}", field="n_prototypes")
    saliency = np.asarray(saliency)
    assignments = np.asarray(assignments)
    if assignments.ndim != 3:
        raise InvalidArgument(
            f"expected assignment maps of shape (N, h, w), got shape {assignments.shape}", field="assignments"
        )
    if not np.issubdtype(assignments.dtype, np.integer):
        raise InvalidArgument(f"expected integer prototype ids, got dtype {assignments.dtype}", field="assignments")
    if saliency.ndim not in (3, 4) or saliency.shape[-3:] != assignments.shape:
        raise InvalidArgument(
            f"saliency shape {saliency.shape} does not match assignments shape {assignments.shape}; "
            "expected saliency (N, h, w) or (T, N, h, w) with the same N, h, w as the assignments",
            field="saliency",
        )
    if not np.issubdtype(saliency.dtype, np.floating) and not np.issubdtype(saliency.dtype, np.integer):
        raise InvalidArgument(f"expected a numeric array, got dtype {saliency.dtype}", field="saliency")
    if assignments.size and (assignments.min() < 0 or assignments.max() >= n_prototypes):
        raise InvalidArgument(
            f"assignment ids range over [{int(assignments.min())}, {int(assignments.max())}] but must lie in "
            f"[0, {n_prototypes}); pass the n_prototypes the assignments were made with",
            field="assignments",
        )
    if not np.isfinite(saliency).all():
        raise InvalidArgument("saliency holds NaN or inf; recompute the maps of that checkpoint", field="saliency")

    n = assignments.shape[0]
    # Bin index n*M + A[n,i,j]: one bincount per checkpoint sums every sample's positions at once.
    bins = (np.arange(n, dtype=np.int64)[:, None, None] * n_prototypes + assignments).ravel()
    per_step = saliency[None] if saliency.ndim == 3 else saliency
    out = np.empty((per_step.shape[0], n, n_prototypes), dtype=np.float32)
    for t, step_saliency in enumerate(per_step):
        sums = np.bincount(bins, weights=step_saliency.ravel().astype(np.float64), minlength=n * n_prototypes)
        out[t] = sums.reshape(n, n_prototypes)
    return out[0] if saliency.ndim == 3 else out
