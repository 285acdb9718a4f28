"""Structured explanations (paper 2.6, 3.3-3.5); the definitions are in docs/METHOD.md.

Per class: shared and specialized prototypes, key checkpoints and, at each, the classes the
driving prototypes separate the class from. Per pair: each prototype's contribution
D_t[m] = W_t[m, a] - W_t[m, b] over steps, classified reliable / uncertain / compensated /
inactive. The most confused pair, its uncertain prototype and the curated set.
Every result is plain Python (ints, floats, lists, dicts) so it serialises to JSON as is.
"""

from __future__ import annotations

import numpy as np

from i2x.core.errors import InvalidArgument

SCHEMA_VERSION = 1
CURATION_SCOPES = ("all", "pair")


# -- validation helpers -------------------------------------------------------------------------
def _int_param(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidArgument(f"must be an integer >= {low}, got {value!r}", field=name)
    return int(value)


def _fraction(value, name: str, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and np.isfinite(value) and (0 <= value <= 1 if allow_zero else 0 < value <= 1)
    if not ok:
        valid = "[0, 1]" if allow_zero else "(0, 1]"
        raise InvalidArgument(f"must be a number in {valid}, got {value!r}", field=name)
    return float(value)


def _non_negative(value, name: str) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and np.isfinite(value) and value >= 0
    if not ok:
        raise InvalidArgument(f"must be a finite number >= 0, got {value!r}", field=name)
    return float(value)


def _check_presence(presence_, name: str = "presence") -> np.ndarray:
    presence_ = np.asarray(presence_)
    if presence_.ndim != 2 or presence_.dtype != bool:
        raise InvalidArgument(f"expected a bool array (samples, M) from presence(), got {presence_.dtype} "
                              f"{presence_.shape}", field=name)
    return presence_


def _check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(f"expected {n} integer class labels (one per explanation sample), got "
                              f"{labels.dtype} {labels.shape}", field="labels")
    return labels.astype(np.int64, copy=False)


def _check_class(c, n_classes: int, name: str) -> int:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_classes:
        raise InvalidArgument(f"unknown class index {c!r}; valid classes are 0..{n_classes - 1}", field=name)
    return int(c)


def _class_members(labels: np.ndarray, c: int, n_classes: int) -> np.ndarray:
    members = np.flatnonzero(labels == c)
    if members.size == 0:
        counts = np.bincount(labels[(labels >= 0) & (labels < n_classes)], minlength=n_classes)
        per_class = ", ".join(f"{k}: {int(v)}" for k, v in enumerate(counts))
        raise InvalidArgument(
            f"class {c} has no samples in the explanation set (samples per class: {per_class}); "
            "use a larger explanation fraction or another seed, or leave that class out",
            field="labels",
        )
    return members


def _check_W(W, n_prototypes: int | None = None) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim != 3 or not np.issubdtype(W.dtype, np.floating) or not np.isfinite(W).all():
        raise InvalidArgument(f"expected finite float W of shape (T-1, M, K), got {W.dtype} {W.shape}", field="W")
    if n_prototypes is not None and W.shape[1] != n_prototypes:
        raise InvalidArgument(f"W has {W.shape[1]} prototypes but presence has {n_prototypes}", field="W")
    return W


def _pair_steps(steps, n_pairs: int) -> tuple[list[int], list[int | None]]:
    """(step t, next step t+1) of each checkpoint pair, from T checkpoint steps or T-1 pair steps."""
    steps = np.asarray(steps)
    if not np.issubdtype(steps.dtype, np.integer) or steps.ndim != 1 or len(steps) not in (n_pairs, n_pairs + 1):
        raise InvalidArgument(
            f"expected {n_pairs + 1} checkpoint steps (or the {n_pairs} pair steps of DynamicsResult.steps), "
            f"got {steps.dtype} {steps.shape}", field="steps")
    starts = [int(s) for s in steps[:n_pairs]]
    ends = [int(s) for s in steps[1:]] if len(steps) == n_pairs + 1 else [None] * n_pairs
    return starts, ends


def _name(class_names, c: int) -> str:
    return str(class_names[c]) if class_names is not None else str(c)


# -- presence and the class's prototypes --------------------------------------------------------
def presence(assignments, n_prototypes: int) -> np.ndarray:
    """presence[n, m]: prototype m occurs somewhere in sample n's assignment map. (N, h, w) -> bool (N, M)."""
    n_prototypes = _int_param(n_prototypes, "n_prototypes", 1)
    assignments = np.asarray(assignments)
    if assignments.ndim != 3 or not np.issubdtype(assignments.dtype, np.integer):
        raise InvalidArgument(f"expected integer assignment maps (N, h, w), got {assignments.dtype} "
                              f"{assignments.shape}", field="assignments")
    if assignments.size and (assignments.min() < 0 or assignments.max() >= n_prototypes):
        raise InvalidArgument(f"prototype ids must lie in [0, {n_prototypes}), got "
                              f"[{int(assignments.min())}, {int(assignments.max())}]", field="assignments")
    n = assignments.shape[0]
    out = np.zeros((n, n_prototypes), dtype=bool)
    rows = np.repeat(np.arange(n), assignments[0].size)
    out[rows, assignments.reshape(-1)] = True
    return out


def shared_prototypes(presence_of_class, min_fraction: float = 1.0) -> list[int]:
    """Prototypes present in at least min_fraction of the class's samples (1.0: in every sample)."""
    presence_of_class = _check_presence(presence_of_class, "presence_of_class")
    min_fraction = _fraction(min_fraction, "min_fraction")
    if presence_of_class.shape[0] == 0:
        raise InvalidArgument("the class has no samples", field="presence_of_class")
    # Compare counts, not float fractions, so 1.0 means exactly "every sample".
    counts = presence_of_class.sum(axis=0)
    needed = int(np.ceil(min_fraction * presence_of_class.shape[0] - 1e-9))
    return [int(m) for m in np.flatnonzero(counts >= needed)]


def _group_samples(presence_of_class: np.ndarray, n_groups: int, method: str, random_state: int) -> np.ndarray:
    distinct = np.unique(presence_of_class, axis=0).shape[0]
    k = min(n_groups, distinct)
    if k <= 1:
        return np.zeros(presence_of_class.shape[0], dtype=np.int64)
    if method == "jaccard":
        from sklearn.cluster import AgglomerativeClustering
        from sklearn.metrics import pairwise_distances

        distances = pairwise_distances(presence_of_class, metric="jaccard")
        return AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(distances)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(presence_of_class.astype(float))


def specialized_prototypes(presence_of_class, shared, n_groups: int = 3, min_group_fraction: float = 0.5,
                           random_state: int = 0, *, method: str = "jaccard") -> list[dict]:
    """Cluster the class's samples by their presence vectors; per group, the non-shared prototypes
    present in at least min_group_fraction of its members.

    method "jaccard": average-linkage agglomerative clustering on Jaccard distances (deterministic);
    "kmeans": KMeans on the 0/1 vectors seeded with random_state. n_groups is capped by the number
    of distinct presence vectors. Groups come largest first; "members" are row indices into
    presence_of_class. Each group: {"members", "size", "prototypes", "fractions"}.
    """
    presence_of_class = _check_presence(presence_of_class, "presence_of_class")
    n_groups = _int_param(n_groups, "n_groups", 1)
    min_group_fraction = _fraction(min_group_fraction, "min_group_fraction")
    if method not in ("jaccard", "kmeans"):
        raise InvalidArgument(f"must be 'jaccard' or 'kmeans', got {method!r}", field="method")
    if presence_of_class.shape[0] == 0:
        raise InvalidArgument("the class has no samples", field="presence_of_class")
    shared_set = {int(m) for m in shared}
    group_of = _group_samples(presence_of_class, n_groups, method, random_state)
    groups = []
    for g in np.unique(group_of):
        members = np.flatnonzero(group_of == g)
        counts = presence_of_class[members].sum(axis=0)
        needed = int(np.ceil(min_group_fraction * len(members) - 1e-9))
        protos = [int(m) for m in np.flatnonzero(counts >= needed) if int(m) not in shared_set]
        groups.append({
            "members": [int(i) for i in members],
            "size": int(len(members)),
            "prototypes": protos,
            "fractions": [float(counts[m] / len(members)) for m in protos],
        })
    groups.sort(key=lambda grp: (-grp["size"], grp["members"][0]))
    return groups


# -- per class ----------------------------------------------------------------------------------
def class_explanation(c, *, presence, labels, confidences, W, steps, class_names=None,
                      shared_min_fraction: float = 1.0, n_groups: int = 3, min_group_fraction: float = 0.5,
                      min_confidence_change: float = 0.01, weight_fraction: float = 0.5,
                      opponent_fraction: float = 0.5, min_weight: float = 0.0, group_method: str = "jaccard",
                      random_state: int = 0) -> dict:
    """Shared and specialized prototypes of class c, its key checkpoints and what they separate.

    Key checkpoint: a pair (t, t+1) where the mean change of class-c confidence over class-c
    samples has |value| >= min_confidence_change AND at least one of the class's prototypes
    (shared or specialized) drives it: |W_t[m, c]| > min_weight and >= weight_fraction x the
    largest |W_t[m', c]| over all prototypes. For a driving prototype m, c' is separated from c
    when W_t[m, c'] has the opposite sign and |W_t[m, c']| >= opponent_fraction x |W_t[m, c]|.
    """
    presence = _check_presence(presence)
    n, n_prototypes = presence.shape
    labels = _check_labels(labels, n)
    confidences = np.asarray(confidences)
    if confidences.ndim != 3 or confidences.shape[1] != n or confidences.shape[0] < 2 \
            or not np.isfinite(confidences).all():
        raise InvalidArgument(f"expected finite confidences (T >= 2, N={n}, K), got shape {confidences.shape}",
                              field="confidences")
    n_checkpoints, _, n_classes = confidences.shape
    W = _check_W(W, n_prototypes)
    if W.shape[0] != n_checkpoints - 1 or W.shape[2] != n_classes:
        raise InvalidArgument(f"W shape {W.shape} does not match (T-1, M, K) = "
                              f"{(n_checkpoints - 1, n_prototypes, n_classes)}", field="W")
    c = _check_class(c, n_classes, "c")
    min_confidence_change = _non_negative(min_confidence_change, "min_confidence_change")
    weight_fraction = _fraction(weight_fraction, "weight_fraction")
    opponent_fraction = _fraction(opponent_fraction, "opponent_fraction")
    min_weight = _non_negative(min_weight, "min_weight")
    starts, ends = _pair_steps(steps, n_checkpoints - 1)
    members = _class_members(labels, c, n_classes)

    presence_c = presence[members]
    shared = shared_prototypes(presence_c, shared_min_fraction)
    groups = specialized_prototypes(presence_c, shared, n_groups, min_group_fraction, random_state,
                                    method=group_method)
    for group in groups:  # report explanation-set indices, not rows of the class's sub-array
        group["members"] = [int(members[i]) for i in group["members"]]
    specialized = sorted({m for group in groups for m in group["prototypes"]})
    class_protos = np.asarray(sorted(set(shared) | set(specialized)), dtype=np.int64)

    # Mean change of class-c confidence over class-c samples, per pair (t, t+1).
    mean_change = np.diff(confidences[:, members, c].astype(np.float64), axis=0).mean(axis=1)

    key_checkpoints, statements = [], []
    for t in range(n_checkpoints - 1):
        if abs(mean_change[t]) < min_confidence_change or class_protos.size == 0:
            continue
        column = np.abs(W[t, :, c].astype(np.float64))
        threshold = max(weight_fraction * column.max(), 0.0)
        drivers = [int(m) for m in class_protos if column[m] > min_weight and column[m] >= threshold]
        if not drivers:
            continue
        drivers.sort(key=lambda m: -column[m])
        entries = []
        for m in drivers:
            w_c = float(W[t, m, c])
            opponents = []
            for other in range(n_classes):
                w_o = float(W[t, m, other])
                if other != c and np.sign(w_o) == -np.sign(w_c) and abs(w_o) >= opponent_fraction * abs(w_c):
                    opponents.append({"class": other, "weight": w_o})
            opponents.sort(key=lambda o: -abs(o["weight"]))
            entries.append({"prototype": m, "weight": w_c, "separates_from": opponents})
            for o in opponents:
                statements.append(f"step {starts[t]}: P-{m} separates {_name(class_names, c)} "
                                  f"from {_name(class_names, o['class'])}")
        key_checkpoints.append({"index": t, "step": starts[t], "next_step": ends[t],
                                "confidence_change": float(mean_change[t]), "prototypes": entries})
    return {
        "class": c,
        "name": _name(class_names, c),
        "n_samples": int(members.size),
        "shared": shared,
        "specialized": groups,
        "specialized_all": specialized,
        "confidence_change": [float(v) for v in mean_change],
        "key_checkpoints": key_checkpoints,
        "statements": statements,
    }


# -- pairs --------------------------------------------------------------------------------------
def pair_analysis(a, b, *, presence, labels, W, steps, class_names=None, min_presence_fraction: float = 0.5,
                  min_contribution_fraction: float = 0.1) -> dict:
    """Each relevant prototype's contribution D_t[m] = W_t[m, a] - W_t[m, b] (> 0 favours a).

    Relevant: present in >= min_presence_fraction of the samples of a or of b. A step is
    significant for m when |D_t[m]| > 0 and >= min_contribution_fraction x the largest |D| over
    the pair's relevant prototypes and steps. Over its significant steps a prototype is
    "inactive" (none), "reliable" (one sign throughout), "compensated" (the sign flips, and at
    every flip another relevant prototype is significant with the opposite sign, carrying the
    decision) or "uncertain" (at least one unsupported flip). Uncertainty score: the sum of
    |D_t[m]| / scale over unsupported flips.
    """
    presence = _check_presence(presence)
    n, n_prototypes = presence.shape
    labels = _check_labels(labels, n)
    W = _check_W(W, n_prototypes)
    n_classes = W.shape[2]
    a = _check_class(a, n_classes, "a")
    b = _check_class(b, n_classes, "b")
    if a == b:
        raise InvalidArgument(f"a pair needs two different classes, got a = b = {a}", field="b")
    min_presence_fraction = _fraction(min_presence_fraction, "min_presence_fraction")
    min_contribution_fraction = _fraction(min_contribution_fraction, "min_contribution_fraction")
    starts, _ = _pair_steps(steps, W.shape[0])
    frac_a = presence[_class_members(labels, a, n_classes)].mean(axis=0)
    frac_b = presence[_class_members(labels, b, n_classes)].mean(axis=0)

    relevant = np.flatnonzero((frac_a >= min_presence_fraction - 1e-12) | (frac_b >= min_presence_fraction - 1e-12))
    D = W[:, relevant, a].astype(np.float64) - W[:, relevant, b].astype(np.float64)  # (T-1, R)
    scale = float(np.abs(D).max()) if D.size else 0.0
    significant = (np.abs(D) > 0) & (np.abs(D) >= min_contribution_fraction * scale)
    sign = np.sign(D) * significant

    rows = []
    for r, m in enumerate(relevant):
        sig_steps = np.flatnonzero(significant[:, r])
        flips, unsupported = [], []
        for prev, t in zip(sig_steps[:-1], sig_steps[1:]):
            if sign[t, r] == sign[prev, r]:
                continue
            flips.append(int(t))
            # Supported: another relevant prototype takes over the side m just left.
            others = np.delete(sign[t], r)
            if not np.any(others == -sign[t, r]):
                unsupported.append(int(t))
        if sig_steps.size == 0:
            category = "inactive"
        elif not flips:
            category = "reliable"
        elif unsupported:
            category = "uncertain"
        else:
            category = "compensated"
        favours = None
        if category == "reliable":
            favours = a if sign[sig_steps[0], r] > 0 else b
        rows.append({
            "prototype": int(m),
            "category": category,
            "favours": favours,
            "presence_a": float(frac_a[m]),
            "presence_b": float(frac_b[m]),
            "significant_steps": int(sig_steps.size),
            "flips": len(flips),
            "unsupported_flips": len(unsupported),
            "flip_steps": [starts[t] for t in flips],
            "unsupported_steps": [starts[t] for t in unsupported],
            "score": float(sum(abs(D[t, r]) for t in unsupported) / scale) if scale else 0.0,
            "alternation": float(sum(abs(D[t, r]) for t in flips) / scale) if scale else 0.0,
            "contribution": [float(v) for v in D[:, r]],
        })

    def ranked(category: str, key: str) -> list[dict]:
        chosen = [row for row in rows if row["category"] == category]
        chosen.sort(key=lambda row: (-row[key], row["prototype"]))
        return [{"prototype": row["prototype"], "score": row[key], "flips": row["flips"],
                 "unsupported_flips": row["unsupported_flips"], "unsupported_steps": row["unsupported_steps"]}
                for row in chosen]

    uncertain = ranked("uncertain", "score")
    compensated = ranked("compensated", "alternation")
    if uncertain:
        chosen, source = uncertain[0]["prototype"], "uncertain"
    elif compensated:  # no unsupported flip anywhere: the most alternating prototype is the best guess
        chosen, source = compensated[0]["prototype"], "compensated"
    else:
        chosen, source = None, None
    return {
        "a": a,
        "b": b,
        "names": [_name(class_names, a), _name(class_names, b)],
        "steps": starts,
        "scale": scale,
        "prototypes": rows,
        "reliable": [{"prototype": row["prototype"], "favours": row["favours"]}
                     for row in rows if row["category"] == "reliable"],
        "uncertain": uncertain,
        "compensated": compensated,
        "inactive": [row["prototype"] for row in rows if row["category"] == "inactive"],
        "uncertain_prototype": chosen,
        "uncertain_prototype_source": source,
    }


def most_confused_pair(confusion) -> tuple[int, int, int]:
    """(a, b, C[a,b] + C[b,a]) with a < b maximising the symmetric off-diagonal count (ties: smallest a, b)."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] < 2:
        raise InvalidArgument(f"expected a square (K, K) confusion matrix with K >= 2, got shape {confusion.shape}",
                              field="confusion")
    if not np.issubdtype(confusion.dtype, np.integer) or confusion.min() < 0:
        raise InvalidArgument("expected non-negative integer counts", field="confusion")
    symmetric = np.triu(confusion + confusion.T, k=1)
    if symmetric.max() == 0:
        raise InvalidArgument("the confusion matrix has no off-diagonal counts (no confused pair); "
                              "give the pair to analyse explicitly", field="confusion")
    a, b = np.unravel_index(int(np.argmax(symmetric)), symmetric.shape)  # row-major: first max wins
    return int(a), int(b), int(symmetric[a, b])


def confused_pairs(confusion) -> list[tuple[int, int, int]]:
    """Every (a, b, C[a,b] + C[b,a]) with a < b and a non-zero count, most confused first (ties: smallest a, b)."""
    most_confused_pair(confusion)  # validates, and refuses a matrix without confusion
    confusion = np.asarray(confusion)
    symmetric = np.triu(confusion + confusion.T, k=1)
    a_idx, b_idx = np.nonzero(symmetric)
    pairs = [(int(a), int(b), int(symmetric[a, b])) for a, b in zip(a_idx, b_idx)]
    return sorted(pairs, key=lambda item: (-item[2], item[0], item[1]))


def curated_indices(presence, labels, prototype, scope: str = "all", pair=None) -> np.ndarray:
    """Indices (int64, ascending) of the samples kept: those whose map lacks `prototype`.
    scope "pair": only samples of the pair's classes are filtered; the others are all kept."""
    presence = _check_presence(presence)
    labels = _check_labels(labels, presence.shape[0])
    if isinstance(prototype, bool) or not isinstance(prototype, (int, np.integer)) \
            or not 0 <= prototype < presence.shape[1]:
        raise InvalidArgument(f"prototype {prototype!r} is out of range; valid prototypes are "
                              f"0..{presence.shape[1] - 1}", field="prototype")
    if scope not in CURATION_SCOPES:
        raise InvalidArgument(f"must be one of {CURATION_SCOPES}, got {scope!r}", field="scope")
    keep = ~presence[:, int(prototype)]
    if scope == "pair":
        if pair is None or len(pair) != 2 or pair[0] == pair[1]:
            raise InvalidArgument(f"scope 'pair' needs pair=(a, b) with a != b, got {pair!r}", field="pair")
        keep |= ~np.isin(labels, np.asarray(pair, dtype=np.int64))
    return np.flatnonzero(keep).astype(np.int64)


def _curation_summary(presence, labels, prototype, scope, pair, n_classes) -> dict:
    kept = curated_indices(presence, labels, prototype, scope, pair)
    removed = np.setdiff1d(np.arange(len(labels)), kept)
    return {
        "size_before": int(len(labels)),
        "size_after": int(kept.size),
        "removed": int(removed.size),
        "removed_per_class": [int(v) for v in np.bincount(labels[removed], minlength=n_classes)],
        "removed_indices": [int(i) for i in removed],
    }


# -- the whole explanation.json -----------------------------------------------------------------
def build_explanation(*, classes, assignments, labels, confidences, W, steps, confusion, n_prototypes,
                      pair=None, curation_scope: str = "all", shared_min_fraction: float = 1.0,
                      n_groups: int = 3, min_group_fraction: float = 0.5, group_method: str = "jaccard",
                      min_confidence_change: float = 0.01, weight_fraction: float = 0.5,
                      opponent_fraction: float = 0.5, min_weight: float = 0.0,
                      min_presence_fraction: float = 0.5, min_contribution_fraction: float = 0.1,
                      random_state: int = 0, tau: float | None = None, lam: float | None = None,
                      min_cluster_size: int | None = None, min_samples: int | None = None,
                      extra_parameters: dict | None = None) -> dict:
    """Everything in explanation.json (schema: docs/EXPLANATION.md). `classes`: the K class names.
    `pair`: analyse this (a, b) instead of the most confused pair of `confusion`.
    tau, lam, min_cluster_size, min_samples (the Eq. 5-8 settings that produced W) and
    extra_parameters are only recorded in "parameters", when given."""
    class_names = [str(name) for name in classes]
    n_classes = len(class_names)
    pres = presence(assignments, n_prototypes)
    labels = _check_labels(labels, pres.shape[0])
    confidences = np.asarray(confidences)
    if confidences.ndim != 3 or confidences.shape[2] != n_classes:
        raise InvalidArgument(f"confidences shape {confidences.shape} must be (T, N, K) with K = {n_classes} "
                              "(the number of class names)", field="confidences")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise InvalidArgument(f"labels must lie in 0..{n_classes - 1}", field="labels")
    if curation_scope not in CURATION_SCOPES:
        raise InvalidArgument(f"must be one of {CURATION_SCOPES}, got {curation_scope!r}", field="curation_scope")
    confusion = np.asarray(confusion)
    if confusion.shape != (n_classes, n_classes):
        raise InvalidArgument(f"confusion shape {confusion.shape} must be (K, K) = {(n_classes, n_classes)}",
                              field="confusion")
    for c in range(n_classes):  # fail up front, naming every class's count
        _class_members(labels, c, n_classes)

    per_class = [
        class_explanation(c, presence=pres, labels=labels, confidences=confidences, W=W, steps=steps,
                          class_names=class_names, shared_min_fraction=shared_min_fraction, n_groups=n_groups,
                          min_group_fraction=min_group_fraction, min_confidence_change=min_confidence_change,
                          weight_fraction=weight_fraction, opponent_fraction=opponent_fraction,
                          min_weight=min_weight, group_method=group_method, random_state=random_state)
        for c in range(n_classes)
    ]

    skipped: list[dict] = []
    if pair is None:
        a, b, count = most_confused_pair(confusion)
        pair_source = "confusion"
    else:
        if len(pair) != 2:
            raise InvalidArgument(f"expected two class indices (a, b), got {pair!r}", field="pair")
        a, b = sorted((_check_class(pair[0], n_classes, "pair"), _check_class(pair[1], n_classes, "pair")))
        if a == b:
            raise InvalidArgument(f"a pair needs two different classes, got a = b = {a}", field="pair")
        count = int(confusion[a, b] + confusion[b, a])
        pair_source = "given"
    def analyse(a: int, b: int) -> dict:
        return pair_analysis(a, b, presence=pres, labels=labels, W=W, steps=steps, class_names=class_names,
                             min_presence_fraction=min_presence_fraction,
                             min_contribution_fraction=min_contribution_fraction)

    analysis = analyse(a, b)
    if pair is None and analysis["uncertain_prototype"] is None:
        # Nothing alternates between the most confused classes: curation needs a confusing
        # prototype, so take the next most confused pair that has one, and say which were passed over.
        passed_over = [{"a": a, "b": b, "count": int(count)}]
        for a2, b2, count2 in confused_pairs(confusion)[1:]:
            candidate = analyse(a2, b2)
            if candidate["uncertain_prototype"] is not None:
                a, b, count, analysis, pair_source = a2, b2, count2, candidate, "confusion-fallback"
                skipped = passed_over
                break
            passed_over.append({"a": a2, "b": b2, "count": int(count2)})
    uncertain = analysis["uncertain_prototype"]
    curation = None
    if uncertain is not None:
        curation = {
            "prototype": uncertain,
            "scope": curation_scope,
            "scopes": {scope: _curation_summary(pres, labels, uncertain, scope, (a, b), n_classes)
                       for scope in CURATION_SCOPES},
        }

    parameters = {
        "n_prototypes": int(n_prototypes), "shared_min_fraction": float(shared_min_fraction),
        "n_groups": int(n_groups), "min_group_fraction": float(min_group_fraction), "group_method": group_method,
        "min_confidence_change": float(min_confidence_change), "weight_fraction": float(weight_fraction),
        "opponent_fraction": float(opponent_fraction), "min_weight": float(min_weight),
        "min_presence_fraction": float(min_presence_fraction),
        "min_contribution_fraction": float(min_contribution_fraction), "curation_scope": curation_scope,
        "random_state": int(random_state),
    }
    recorded = {"tau": tau, "lam": lam, "min_cluster_size": min_cluster_size, "min_samples": min_samples}
    parameters.update({name: value for name, value in recorded.items() if value is not None})
    parameters.update(_jsonable(extra_parameters or {}))
    starts, ends = _pair_steps(steps, confidences.shape[0] - 1)
    checkpoint_steps = starts + [ends[-1]] if ends and ends[-1] is not None else None
    return {
        "schema_version": SCHEMA_VERSION,
        "classes": class_names,
        "n_samples": int(len(labels)),
        "n_prototypes": int(n_prototypes),
        "n_checkpoints": int(confidences.shape[0]),
        "checkpoint_steps": checkpoint_steps,
        "pair_steps": starts,
        "samples_per_class": [int(v) for v in np.bincount(labels, minlength=n_classes)],
        "parameters": parameters,
        "per_class": per_class,
        "most_confused_pair": {"a": a, "b": b, "names": [class_names[a], class_names[b]], "count": int(count),
                               "a_to_b": int(confusion[a, b]), "b_to_a": int(confusion[b, a]),
                               "source": pair_source, "skipped": skipped},
        "pair_analysis": analysis,
        "uncertain_prototype": uncertain,
        "uncertain_prototype_source": analysis["uncertain_prototype_source"],
        "curation": curation,
    }


def _jsonable(value):
    """numpy scalars and arrays inside `value` -> plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
