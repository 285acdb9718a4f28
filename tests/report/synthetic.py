"""A small synthetic run written into a store with the docs/ARTIFACTS.md layout.

Arrays are random but consistent with each other (same N, K, M, T, h, w everywhere); the
intensities, the mapping W and explanation.json come from the real method code
(i2x.core.intensity, i2x.core.dynamics, i2x.core.explain) so the explanation follows its schema.
"""

from __future__ import annotations

import numpy as np

from i2x.core.dynamics import fit_dynamics
from i2x.core.explain import build_explanation
from i2x.core.intensity import prototype_intensity
from i2x.storage import Store, run_key

CLASSES = ["T-shirt", "trouser", "pullover", "dress"]
TEST_PER_CLASS = 120


def write_synthetic_run(store: Store, run_id: str, *, seed: int = 0, n_per_class: int = 10, n_prototypes: int = 8,
                        steps=(0, 40, 80, 120, 160, 200), image_size: int = 28, feature_size: int = 7,
                        channels: int = 1, finetune: bool = True, schema: int = 1, train: dict | None = None) -> dict:
    """schema=2 adds the fields of explanation.json schema 2 (docs/EXPLANATION.md) the report reads:
    most_confused_pair / analysed_pair (with reason), warnings, background_prototypes,
    per_class presence and statement_details, per-class removed fractions and the curation cap;
    plus Table 1 intervals and Welch test and the interpretation placement."""
    rng = np.random.default_rng(seed)
    K, M, T = len(CLASSES), n_prototypes, len(steps)
    labels = np.repeat(np.arange(K), n_per_class)
    N = len(labels)
    H = W_img = image_size
    h = w = feature_size

    images = (rng.random((N, H, W_img, channels)) * 60).astype(np.uint8)
    for n, c in enumerate(labels):  # a bright bar whose row depends on the class: something to look at
        row = 4 + 5 * c
        images[n, row:row + 4, 4:24] = 230
    # Each sample shows a few prototypes: c in every sample of class c (a shared prototype),
    # c + K in half of them (specialized), and background prototype M - 1 elsewhere.
    assignments = np.full((N, h, w), M - 1, dtype=np.int16)
    for n, c in enumerate(labels):
        assignments[n, c % h, :] = c
        if n % 2 == 0 and c + K < M - 1:
            assignments[n, (c + 2) % h, 1:4] = c + K
        if c == 3 and n % 2 == 1:  # trouser's shared prototype in half the dresses: the pair shares it
            assignments[n, 1 % h, 2:6] = 1
        assignments[n, rng.integers(0, h), rng.integers(0, w)] = rng.integers(0, M)
    # Confidences drift from uniform towards the true class over the checkpoints.
    confidences = np.empty((T, N, K), dtype=np.float32)
    saliency = np.empty((T, N, h, w), dtype=np.float16)
    for t in range(T):
        logits = rng.normal(0, 0.5, size=(N, K))
        logits[np.arange(N), labels] += 3.0 * t / (T - 1)
        logits[labels == 1, 3] += 1.5 * np.sin(t)  # trouser/dress see-saw: a confused pair
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        confidences[t] = exp / exp.sum(axis=1, keepdims=True)
        saliency[t] = rng.random((N, h, w)) * (0.3 + t / T)

    intensity = prototype_intensity(saliency, assignments, M)
    cluster_labels = np.tile(labels, (T - 1, 1)).astype(np.int32)  # one "HDBSCAN" cluster per class
    dynamics = fit_dynamics(confidences, intensity, np.asarray(steps, dtype=np.int64), labels=cluster_labels)
    confusion = rng.integers(0, 4, size=(K, K)) + np.diag(rng.integers(80, 100, size=K))
    confusion[1, 3] += 12
    confusion[3, 1] += 7
    np.fill_diagonal(confusion, 0)
    np.fill_diagonal(confusion, TEST_PER_CLASS - confusion.sum(axis=1))  # the same test split for every seed
    explanation = build_explanation(classes=CLASSES, assignments=assignments, labels=labels,
                                    confidences=confidences, W=dynamics.W, steps=dynamics.steps,
                                    confusion=confusion, n_prototypes=M, min_confidence_change=0.0)
    explanation["run_id"] = run_id
    if schema == 2:
        confusion[0, 2] += 25  # now 0 / 2 is the most confused pair; the analysed one stays 1 / 3
        confusion[2, 0] += 15
        confusion[0, 0] -= 25
        confusion[2, 2] -= 15
        upgrade_to_schema_2(explanation, assignments, labels, confusion, M)

    key = lambda *parts: run_key(run_id, *parts)  # noqa: E731
    meta = {"run_id": run_id, "classes": CLASSES,
            "model": {"arch": "small_cnn", "num_classes": K, "in_channels": channels, "image_size": image_size},
            "dataset": {"name": "synthetic", "root": None},
            "train": train or {"preset": "mnist", "seed": seed, "epochs": 2, "batch_size": 128},
            "explanation": {"fraction": 0.1, "seed": 42, "size": N}, "target_layer": "features.conv3",
            "sizes": {"train": 10 * N, "test": int(confusion.sum()), "explanation": N}}
    store.put_json(key("run.json"), meta)
    store.put_npz(key("data", "explanation.npz"), indices=np.arange(N, dtype=np.int64) * 3,
                  labels=labels.astype(np.int64), images=images)
    store.put_json(key("checkpoints", "index.json"),
                   {"checkpoints": [{"step": s, "epoch": 0, "loss": 1.0 / (1 + s), "accuracy": None,
                                     "key": key("checkpoints", f"step-{s:06d}.safetensors")} for s in steps]})
    store.put_npz(key("evaluation", "final.npz"), confusion=confusion.astype(np.int64),
                  predictions=np.zeros(0, np.int64), labels=np.zeros(0, np.int64))
    for t, s in enumerate(steps):
        store.put_npz(key("interpretation", f"step-{s:06d}.npz"), saliency=saliency[t],
                      confidences=confidences[t], predictions=confidences[t].argmax(axis=1).astype(np.int16))
    index = {"layer": "features.conv3", "target": "predicted", "steps": list(steps)}
    if schema == 2:  # per-unit placement: two nodes, the last checkpoint on a GPU
        index["units"] = [{"step": s, "key": key("interpretation", f"step-{s:06d}.npz"),
                           "node_id": "node-a" if t < T - 1 else "node-b",
                           "device": "cpu" if t < T - 1 else "cuda:0", "seconds": 0.5 + t}
                          for t, s in enumerate(steps)]
    store.put_json(key("interpretation", "index.json"), index)
    store.put_npz(key("clustering", "prototypes.npz"), assignments=assignments,
                  centroids=rng.random((M, 4)).astype(np.float32),
                  pca_components=rng.random((4, 16)).astype(np.float32), pca_mean=np.zeros(16, np.float32))
    store.put_npz(key("clustering", "confidence_clusters.npz"), labels=cluster_labels,
                  steps=np.asarray(steps[:-1], dtype=np.int64))
    store.put_npz(key("explanation", "intensity.npz"), intensity=intensity, steps=np.asarray(steps, np.int64))
    store.put_npz(key("explanation", "mapping.npz"), W=dynamics.W, dP=np.asarray(dynamics.dP, np.float32),
                  dI=np.asarray(dynamics.dI, np.float32), cluster_step=np.asarray(dynamics.cluster_step, np.int64),
                  cluster_label=np.asarray(dynamics.cluster_label, np.int32), steps=dynamics.steps)
    store.put_json(key("explanation", "explanation.json"), explanation)
    if finetune:
        a, b = explanation["pair_analysis"]["a"], explanation["pair_analysis"]["b"]
        after = confusion.copy()
        after[a, b] = max(after[a, b] - 6, 0)
        after[b, a] = max(after[b, a] - 3, 0)
        rows = [{"protocol": p, "accuracy": {"mean": 0.95 + 0.005 * i, "std": 0.002},
                 "a_to_b": {"mean": 10.0 - i, "std": 1.0}, "b_to_a": {"mean": 6.0 - i / 2, "std": 0.5},
                 "sum": {"mean": 16.0 - 1.5 * i, "std": 1.2}}
                for i, p in enumerate(["full", "curated", "full->full", "curated->curated", "curated->full"])]
        table = {"pair": [a, b], "repeats": 5, "rows": rows}
        if schema == 2:  # the schema i2x.core.finetune writes: per-seed runs, then its statistics
            from i2x.core.finetune import add_statistics

            for i, row in enumerate(rows):  # curated->full (i = 4) and full->full (i = 2) overlap
                sums = [12 + i % 2 + r % 2 + r % 3 + (i == 4 and r == 0) for r in range(5)]
                row["runs"] = [{"seed": r, "accuracy": 0.95 + 0.005 * i + 0.001 * r, "a_to_b": total // 2,
                                "b_to_a": total - total // 2, "sum": total} for r, total in enumerate(sums)]
            table = add_statistics(table)
        store.put_json(key("finetune", "table.json"),
                       {**table,
                        "baseline": {"accuracy": 0.9034, "a_to_b": 14, "b_to_a": 9, "sum": 23}, "prototype": explanation["uncertain_prototype"],
                        "confusions": {"curated->full": after.tolist()}})
    return explanation


def upgrade_to_schema_2(explanation: dict, assignments, labels, confusion, M: int) -> None:
    """Add schema 2's fields, by hand from the arrays (the report must read them, not recompute)."""
    K = len(CLASSES)
    analysed = dict(explanation["most_confused_pair"])
    explanation["schema_version"] = 2
    # The true most confused pair is another one here (0 / 2): the analysed pair was chosen as
    # the next one, so the report must never call it the most confused.
    a_to_b, b_to_a = int(confusion[0, 2]), int(confusion[2, 0])
    explanation["most_confused_pair"] = {"a": 0, "b": 2, "names": [CLASSES[0], CLASSES[2]], "count": a_to_b + b_to_a,
                                         "a_to_b": a_to_b, "b_to_a": b_to_a, "source": "confusion",
                                         "tie_break": "larger single direction"}
    explanation["analysed_pair"] = {**analysed, "reason": "next-confused",
                                    "skipped": [{"a": 0, "b": 2, "count": a_to_b + b_to_a}]}
    explanation["warnings"] = [
        {"code": "few_pair_confusions", "message": "the analysed pair has only 19 test confusions"},
        {"code": "few_checkpoints", "message": "only 6 checkpoints: key checkpoints are coarse"}]
    explanation["background_prototypes"] = [M - 1]
    for entry in explanation["per_class"]:
        members = labels == entry["class"]
        entry["presence"] = [float((assignments[members] == m).any(axis=(1, 2)).mean()) for m in range(M)]
        entry["statement_details"] = [
            {"step": key["step"], "prototype": d["prototype"], "class": entry["class"],
             "opponent": o["class"], "support": entry["presence"][d["prototype"]], "text": ""}
            for key in entry["key_checkpoints"] for d in key["prototypes"] for o in d["separates_from"]]
    curation = explanation.get("curation")
    if curation:
        counts = np.bincount(labels, minlength=K)
        for summary in curation["scopes"].values():
            summary["removed_fraction_per_class"] = [n / counts[c] for c, n in enumerate(summary["removed_per_class"])]
        curation["limited"] = True
        curation["cap"] = 0.5
