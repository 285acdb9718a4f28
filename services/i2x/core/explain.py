"""Structured explanations (paper 2.6, 3.3-3.5); the definitions are in docs/METHOD.md.

Per class: shared and specialized prototypes, key checkpoints and, at each, the classes the
driving prototypes separate the class from, each with its support (the share of the class's
samples holding the prototype). Per pair: each prototype's contribution
D_t[m] = W_t[m, a] - W_t[m, b] over steps, classified reliable / uncertain / compensated /
one-class / background / inactive. The most confused pair, the analysed pair, its uncertain
prototype, the curated set (capped per class) and the sanity warnings.
Every result is plain Python (ints, floats, lists, dicts) so it serialises to JSON as is.
"""

from __future__ import annotations

import numpy as np

from i2x.core.errors import InvalidArgument

SCHEMA_VERSION = 2
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


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


def _at_least(count, fraction: float, n: int) -> np.ndarray | bool:
    """count >= ceil(fraction x n), on integers so that 1.0 means exactly "all"."""
    return count >= int(np.ceil(fraction * n - 1e-9))


# -- presence and the class's prototypes --------------------------------------------------------
def presence(assignments, n_prototypes: int) -> np.ndarray:
    """presence[n, m]: prototype m occurs somewhere in sample n's assignment map. (N, h, w) -> bool (N, M)."""
    n_prototypes = _int_param(n_prototypes, "n_prototypes", 1)
    assignments = _check_assignments(assignments, n_prototypes)
    n = assignments.shape[0]
    out = np.zeros((n, n_prototypes), dtype=bool)
    rows = np.repeat(np.arange(n), assignments[0].size)
    out[rows, assignments.reshape(-1)] = True
    return out


def _check_assignments(assignments, n_prototypes: int) -> np.ndarray:
    assignments = np.asarray(assignments)
    if assignments.ndim != 3 or not np.issubdtype(assignments.dtype, np.integer):
        raise InvalidArgument(f"expected integer assignment maps (N, h, w), got {assignments.dtype} "
                              f"{assignments.shape}", field="assignments")
    if assignments.size and (assignments.min() < 0 or assignments.max() >= n_prototypes):
        raise InvalidArgument(f"prototype ids must lie in [0, {n_prototypes}), got "
                              f"[{int(assignments.min())}, {int(assignments.max())}]", field="assignments")
    return assignments


def prototype_area(assignments, prototype: int) -> np.ndarray:
    """Per sample, the number of feature positions assigned to `prototype` (0 when absent). (N,) int64."""
    assignments = np.asarray(assignments)
    return (assignments.reshape(assignments.shape[0], -1) == int(prototype)).sum(axis=1).astype(np.int64)


def class_presence(presence_, labels, n_classes: int) -> np.ndarray:
    """(K, M): share of class c's samples that hold prototype m (0 for a class without samples)."""
    presence_ = _check_presence(presence_)
    labels = _check_labels(labels, presence_.shape[0])
    out = np.zeros((n_classes, presence_.shape[1]), dtype=np.float64)
    for c in range(n_classes):
        members = labels == c
        if members.any():
            out[c] = presence_[members].mean(axis=0)
    return out


def background_prototypes(presence_, labels, n_classes: int, sample_fraction: float = 0.9,
                          class_fraction: float = 0.9) -> list[int]:
    """Prototypes present in >= sample_fraction of the samples of >= class_fraction of the classes
    (counted as ceil(fraction x count)): parts of every image (empty corners, the frame), not of a class."""
    presence_ = _check_presence(presence_)
    labels = _check_labels(labels, presence_.shape[0])
    sample_fraction = _fraction(sample_fraction, "background_sample_fraction")
    class_fraction = _fraction(class_fraction, "background_class_fraction")
    common = np.zeros(presence_.shape[1], dtype=np.int64)
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        if members.size:
            common += _at_least(presence_[members].sum(axis=0), sample_fraction, members.size)
    return [int(m) for m in np.flatnonzero(_at_least(common, class_fraction, n_classes))]


def shared_prototypes(presence_of_class, min_fraction: float = 1.0) -> list[int]:
    """Prototypes present in at least min_fraction of the class's samples (1.0: in every sample)."""
    presence_of_class = _check_presence(presence_of_class, "presence_of_class")
    min_fraction = _fraction(min_fraction, "min_fraction")
    if presence_of_class.shape[0] == 0:
        raise InvalidArgument("the class has no samples", field="presence_of_class")
    counts = presence_of_class.sum(axis=0)
    return [int(m) for m in np.flatnonzero(_at_least(counts, min_fraction, presence_of_class.shape[0]))]


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


def min_group_size_for(n_class_samples: int, min_group_size: int = 3, min_group_size_fraction: float = 0.1) -> int:
    """The smallest sample group whose prototypes count as specialized: max(min_group_size,
    ceil(min_group_size_fraction x n_c)). One image is an anecdote, not a sub-type of a class."""
    return max(int(min_group_size), int(np.ceil(min_group_size_fraction * n_class_samples - 1e-9)))


def specialized_prototypes(presence_of_class, shared, n_groups: int = 3, min_group_fraction: float = 0.5,
                           random_state: int = 0, *, method: str = "jaccard", min_group_size: int = 1) -> list[dict]:
    """Cluster the class's samples by their presence vectors; per group of at least min_group_size
    members, the non-shared prototypes present in at least min_group_fraction of its members.

    method "jaccard": average-linkage agglomerative clustering on Jaccard distances (deterministic);
    "kmeans": KMeans on the 0/1 vectors seeded with random_state. n_groups is capped by the number
    of distinct presence vectors. Groups come largest first; "members" are row indices into
    presence_of_class. Each group: {"members", "size", "prototypes", "fractions", "below_min_size"};
    a group below min_group_size keeps its members but has no specialized prototypes.
    """
    presence_of_class = _check_presence(presence_of_class, "presence_of_class")
    n_groups = _int_param(n_groups, "n_groups", 1)
    min_group_size = _int_param(min_group_size, "min_group_size", 1)
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
        small = len(members) < min_group_size
        protos = [] if small else [int(m) for m in np.flatnonzero(_at_least(counts, min_group_fraction, len(members)))
                                   if int(m) not in shared_set]
        groups.append({
            "members": [int(i) for i in members],
            "size": int(len(members)),
            "prototypes": protos,
            "fractions": [float(counts[m] / len(members)) for m in protos],
            "below_min_size": bool(small),
        })
    groups.sort(key=lambda grp: (-grp["size"], grp["members"][0]))
    return groups


# -- per class ----------------------------------------------------------------------------------
def class_explanation(c, *, presence, labels, confidences, W, steps, class_names=None,
                      shared_min_fraction: float = 1.0, n_groups: int = 3, min_group_fraction: float = 0.5,
                      min_confidence_change: float = 0.01, weight_fraction: float = 0.5,
                      opponent_fraction: float = 0.5, min_weight: float = 0.0, group_method: str = "jaccard",
                      random_state: int = 0, min_group_size: int = 3, min_group_size_fraction: float = 0.1,
                      background=()) -> dict:
    """Shared and specialized prototypes of class c, its key checkpoints and what they separate.

    Key checkpoint: a pair (t, t+1) where the mean change of class-c confidence over class-c
    samples has |value| >= min_confidence_change AND at least one of the class's prototypes
    (shared or specialized, not background) drives it: |W_t[m, c]| > min_weight and >=
    weight_fraction x the largest |W_t[m', c]| over all prototypes. For a driving prototype m, c' is
    separated from c when W_t[m, c'] has the opposite sign and |W_t[m, c']| >= opponent_fraction x
    |W_t[m, c]|. Every statement carries its support: the share of class c's samples holding m.
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
    min_group_size = _int_param(min_group_size, "min_group_size", 1)
    min_group_size_fraction = _fraction(min_group_size_fraction, "min_group_size_fraction", allow_zero=True)
    starts, ends = _pair_steps(steps, n_checkpoints - 1)
    members = _class_members(labels, c, n_classes)

    presence_c = presence[members]
    support = presence_c.mean(axis=0)
    shared = shared_prototypes(presence_c, shared_min_fraction)
    group_min = min_group_size_for(members.size, min_group_size, min_group_size_fraction)
    groups = specialized_prototypes(presence_c, shared, n_groups, min_group_fraction, random_state,
                                    method=group_method, min_group_size=group_min)
    for group in groups:  # report explanation-set indices, not rows of the class's sub-array
        group["members"] = [int(members[i]) for i in group["members"]]
    specialized = sorted({m for group in groups for m in group["prototypes"]})
    background_set = {int(m) for m in background}
    class_protos = np.asarray(sorted((set(shared) | set(specialized)) - background_set), dtype=np.int64)

    # Mean change of class-c confidence over class-c samples, per pair (t, t+1).
    mean_change = np.diff(confidences[:, members, c].astype(np.float64), axis=0).mean(axis=1)

    name_c = _name(class_names, c)
    key_checkpoints, statements, details = [], [], []
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
            entries.append({"prototype": m, "weight": w_c, "support": float(support[m]), "separates_from": opponents})
            for o in opponents:
                text = (f"step {starts[t]}: P-{m} (in {_pct(support[m])} of '{name_c}') separates '{name_c}' "
                        f"from '{_name(class_names, o['class'])}'")
                statements.append(text)
                details.append({"step": starts[t], "prototype": m, "class": c, "opponent": int(o["class"]),
                                "support": float(support[m]), "text": text})
        key_checkpoints.append({"index": t, "step": starts[t], "next_step": ends[t],
                                "confidence_change": float(mean_change[t]), "prototypes": entries})
    return {
        "class": c,
        "name": name_c,
        "n_samples": int(members.size),
        "presence": [float(v) for v in support],
        "shared": shared,
        "min_group_size": int(group_min),
        "specialized": groups,
        "specialized_all": specialized,
        "confidence_change": [float(v) for v in mean_change],
        "key_checkpoints": key_checkpoints,
        "statements": statements,
        "statement_details": details,
    }


# -- pairs --------------------------------------------------------------------------------------
def pair_analysis(a, b, *, presence, labels, W, steps, class_names=None, min_presence_fraction: float = 0.5,
                  min_contribution_fraction: float = 0.1, min_shared_fraction: float = 0.25,
                  background=()) -> dict:
    """Each relevant prototype's contribution D_t[m] = W_t[m, a] - W_t[m, b] (> 0 favours a).

    Relevant: present in >= min_presence_fraction of the samples of a or of b. A step is
    significant for m when |D_t[m]| > 0 and >= min_contribution_fraction x the largest |D| over
    the pair's relevant prototypes and steps. Over its significant steps a prototype is
    "inactive" (none), "reliable" (one sign throughout), "compensated" (the sign flips, and at
    every flip another relevant prototype is significant with the opposite sign, carrying the
    decision) or "uncertain" (at least one unsupported flip). Uncertain and compensated need the
    prototype to be shared by the pair: present in >= min_shared_fraction of a's samples AND of
    b's; a flipping prototype of one class only is "one-class". A background prototype is
    "background" whatever its signs. Uncertainty score: the sum of |D_t[m]| / scale over
    unsupported flips.
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
    min_shared_fraction = _fraction(min_shared_fraction, "min_shared_fraction")
    starts, _ = _pair_steps(steps, W.shape[0])
    members_a = _class_members(labels, a, n_classes)
    members_b = _class_members(labels, b, n_classes)
    count_a, count_b = presence[members_a].sum(axis=0), presence[members_b].sum(axis=0)
    frac_a, frac_b = count_a / members_a.size, count_b / members_b.size
    background_set = {int(m) for m in background}

    relevant = np.flatnonzero(_at_least(count_a, min_presence_fraction, members_a.size)
                              | _at_least(count_b, min_presence_fraction, members_b.size))
    shared_by_pair = _at_least(count_a, min_shared_fraction, members_a.size) \
        & _at_least(count_b, min_shared_fraction, members_b.size)
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
        if int(m) in background_set:
            category = "background"
        elif category in ("uncertain", "compensated") and not shared_by_pair[m]:
            category = "one-class"
        favours = None
        if category == "reliable":
            favours = a if sign[sig_steps[0], r] > 0 else b
        rows.append({
            "prototype": int(m),
            "category": category,
            "favours": favours,
            "presence_a": float(frac_a[m]),
            "presence_b": float(frac_b[m]),
            "shared_by_pair": bool(shared_by_pair[m]),
            "background": int(m) in background_set,
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
                 "unsupported_flips": row["unsupported_flips"], "unsupported_steps": row["unsupported_steps"],
                 "presence_a": row["presence_a"], "presence_b": row["presence_b"]}
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
        "one_class": [row["prototype"] for row in rows if row["category"] == "one-class"],
        "background": [row["prototype"] for row in rows if row["category"] == "background"],
        "inactive": [row["prototype"] for row in rows if row["category"] == "inactive"],
        "uncertain_prototype": chosen,
        "uncertain_prototype_source": source,
        "withheld": None,
    }


PAIR_ANALYSIS_PARAMETERS = ("min_presence_fraction", "min_contribution_fraction", "min_shared_fraction")


def pair_context(explanation: dict | None) -> dict:
    """The pair_analysis keyword arguments an explanation.json used (its thresholds and background
    prototypes), so that another pair of the same run is analysed by the same rules."""
    if not explanation:
        return {}
    parameters = explanation.get("parameters") or {}
    context = {name: parameters[name] for name in PAIR_ANALYSIS_PARAMETERS if name in parameters}
    if explanation.get("background_prototypes") is not None:
        context["background"] = [int(m) for m in explanation["background_prototypes"]]
    return context


def withhold_near_chance(analysis: dict, explanation: dict | None) -> dict:
    """A pair analysis of a run whose explanation found the model near chance names no uncertain prototype."""
    if explanation and any(w.get("code") == "NEAR_CHANCE_ACCURACY" for w in explanation.get("warnings") or []):
        return {**analysis, "uncertain_prototype": None, "uncertain_prototype_source": None,
                "withheld": "NEAR_CHANCE_ACCURACY"}
    return analysis


def _check_confusion(confusion) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] < 2:
        raise InvalidArgument(f"expected a square (K, K) confusion matrix with K >= 2, got shape {confusion.shape}",
                              field="confusion")
    if not np.issubdtype(confusion.dtype, np.integer) or confusion.min() < 0:
        raise InvalidArgument("expected non-negative integer counts", field="confusion")
    return confusion


TIE_BREAKS = ("larger single direction", "confusions on the explanation set", "lowest index")


def rank_confused_pairs(confusion, secondary=None) -> list[dict]:
    """Every pair a < b with C[a, b] + C[b, a] > 0, most confused first.

    Order: the count C[a, b] + C[b, a]; ties: the larger single direction max(C[a, b], C[b, a]);
    then the pair's confusions in `secondary` (the final model's confusion matrix on the
    explanation set, when given); then the lowest (a, b). Each entry: a, b, count, a_to_b, b_to_a,
    secondary (int or None), and tie_break: which of TIE_BREAKS set it above the next entry of the
    same count (None when no later entry has its count)."""
    confusion = _check_confusion(confusion)
    if secondary is not None:
        secondary = _check_confusion(secondary)
        if secondary.shape != confusion.shape:
            raise InvalidArgument(f"secondary confusion {secondary.shape} must match {confusion.shape}",
                                  field="secondary")
    k = confusion.shape[0]
    pairs = []
    for a in range(k):
        for b in range(a + 1, k):
            count = int(confusion[a, b] + confusion[b, a])
            if count:
                pairs.append({"a": a, "b": b, "count": count, "a_to_b": int(confusion[a, b]),
                              "b_to_a": int(confusion[b, a]),
                              "secondary": None if secondary is None else int(secondary[a, b] + secondary[b, a])})

    def key(p):
        return (-p["count"], -max(p["a_to_b"], p["b_to_a"]), -(p["secondary"] or 0), p["a"], p["b"])

    pairs.sort(key=key)
    for i, p in enumerate(pairs):
        nxt = pairs[i + 1] if i + 1 < len(pairs) else None
        if nxt is None or nxt["count"] != p["count"]:
            p["tie_break"] = None
        elif max(nxt["a_to_b"], nxt["b_to_a"]) != max(p["a_to_b"], p["b_to_a"]):
            p["tie_break"] = TIE_BREAKS[0]
        elif (nxt["secondary"] or 0) != (p["secondary"] or 0):
            p["tie_break"] = TIE_BREAKS[1]
        else:
            p["tie_break"] = TIE_BREAKS[2]
    return pairs


def most_confused_pair(confusion, secondary=None) -> tuple[int, int, int]:
    """(a, b, C[a,b] + C[b,a]): the first pair of rank_confused_pairs (ties: larger single
    direction, then `secondary`, then the lowest index)."""
    ranking = rank_confused_pairs(confusion, secondary)
    if not ranking:
        raise InvalidArgument("the confusion matrix has no off-diagonal counts (no confused pair); "
                              "give the pair to analyse explicitly", field="confusion")
    return ranking[0]["a"], ranking[0]["b"], ranking[0]["count"]


def confused_pairs(confusion, secondary=None) -> list[tuple[int, int, int]]:
    """Every (a, b, C[a,b] + C[b,a]) with a < b and a non-zero count, in rank_confused_pairs' order."""
    most_confused_pair(confusion, secondary)  # validates, and refuses a matrix without confusion
    return [(p["a"], p["b"], p["count"]) for p in rank_confused_pairs(confusion, secondary)]


# -- curation -----------------------------------------------------------------------------------
def curated_indices(presence, labels, prototype, scope: str = "all", pair=None, *,
                    max_removed_fraction: float = 1.0, area=None) -> np.ndarray:
    """Indices (int64, ascending) of the samples kept: those whose map lacks `prototype`.
    scope "pair": only samples of the pair's classes are filtered; the others are all kept.
    max_removed_fraction: at most floor(fraction x n_c) samples of any class c are removed; when
    more hold the prototype, those with the largest `area` (positions of the prototype, default:
    all equal) go first, ties to the lower index."""
    return _curate(presence, labels, prototype, scope, pair, max_removed_fraction, area)[0]


def _curate(presence, labels, prototype, scope, pair, max_removed_fraction, area):
    presence = _check_presence(presence)
    labels = _check_labels(labels, presence.shape[0])
    if isinstance(prototype, bool) or not isinstance(prototype, (int, np.integer)) \
            or not 0 <= prototype < presence.shape[1]:
        raise InvalidArgument(f"prototype {prototype!r} is out of range; valid prototypes are "
                              f"0..{presence.shape[1] - 1}", field="prototype")
    if scope not in CURATION_SCOPES:
        raise InvalidArgument(f"must be one of {CURATION_SCOPES}, got {scope!r}", field="scope")
    cap = _fraction(max_removed_fraction, "max_removed_fraction", allow_zero=True)
    area = np.ones(len(labels), dtype=np.int64) if area is None else np.asarray(area)
    remove = presence[:, int(prototype)].copy()
    if scope == "pair":
        if pair is None or len(pair) != 2 or pair[0] == pair[1]:
            raise InvalidArgument(f"scope 'pair' needs pair=(a, b) with a != b, got {pair!r}", field="pair")
        remove &= np.isin(labels, np.asarray(pair, dtype=np.int64))
    limited = {}
    for c in np.unique(labels):
        n_c = int(np.sum(labels == c))
        candidates = np.flatnonzero(remove & (labels == c))
        allowed = int(np.floor(cap * n_c + 1e-9))
        if candidates.size > allowed:
            order = sorted(candidates, key=lambda i: (-area[i], i))  # the most prominent occurrences go first
            remove[order[allowed:]] = False
            limited[int(c)] = (int(candidates.size), n_c, allowed)
    return np.flatnonzero(~remove).astype(np.int64), limited


def curation_summary(presence, labels, prototype, scope: str = "all", pair=None, *, n_classes: int,
                     max_removed_fraction: float = 1.0, area=None, class_names=None) -> dict:
    """What curating with `prototype` does: sizes, removed samples per class (count and fraction)
    and, when the cap limited it, which classes and a message saying what to change."""
    labels = _check_labels(labels, np.asarray(presence).shape[0])
    kept, limited = _curate(presence, labels, prototype, scope, pair, max_removed_fraction, area)
    removed = np.setdiff1d(np.arange(len(labels)), kept)
    per_class = np.bincount(labels[removed], minlength=n_classes)
    sizes = np.bincount(labels, minlength=n_classes)
    message = None
    if limited:
        parts = [f"{held} of the {n_c} '{_name(class_names, c)}' samples ({_pct(held / n_c)})"
                 for c, (held, n_c, _allowed) in sorted(limited.items())]
        message = (f"P-{int(prototype)} is in {', '.join(parts)}, more than the cap of "
                   f"{_pct(max_removed_fraction)} of a class: only the {_pct(max_removed_fraction)} with the "
                   f"largest area of P-{int(prototype)} are removed from those classes. To remove every sample "
                   "that holds it, set max_removed_fraction to 1.0 (ExplainParams.extra); or curate with "
                   "another prototype (Curate's prototype).")
    return {
        "size_before": int(len(labels)),
        "size_after": int(kept.size),
        "removed": int(removed.size),
        "removed_per_class": [int(v) for v in per_class],
        "removed_fraction_per_class": [float(r / s) if s else 0.0 for r, s in zip(per_class, sizes)],
        "removed_indices": [int(i) for i in removed],
        "cap": float(max_removed_fraction),
        "limited": bool(limited),
        "limited_classes": sorted(limited),
        "message": message,
    }


# -- sanity checks ------------------------------------------------------------------------------
WARNING_CODES = ("NEAR_CHANCE_ACCURACY", "FEW_CHECKPOINTS", "MOSTLY_NOISE", "FEW_CLASS_SAMPLES",
                 "FEW_PAIR_CONFUSIONS", "MOST_CONFUSED_PAIR_SKIPPED", "NO_UNCERTAIN_PROTOTYPE", "CURATION_LIMITED")


def _warning(code: str, message: str) -> dict:
    assert code in WARNING_CODES, code
    return {"code": code, "message": message}


def accuracy_and_chance(confusion) -> tuple[float, float]:
    """(test accuracy, chance accuracy): trace / total, and the share of the largest true class
    (what always predicting that class scores)."""
    confusion = _check_confusion(confusion)
    total = int(confusion.sum())
    if total == 0:
        return 0.0, 0.0
    return float(np.trace(confusion) / total), float(confusion.sum(axis=1).max() / total)


def near_chance(accuracy: float, chance: float, margin: float) -> bool:
    """accuracy < chance + margin x (1 - chance): the model recovers less than `margin` of what
    lies between guessing the largest class and a perfect score."""
    return accuracy < chance + margin * (1.0 - chance)


# -- the whole explanation.json -----------------------------------------------------------------
def build_explanation(*, classes, assignments, labels, confidences, W, steps, confusion, n_prototypes,
                      pair=None, curation_scope: str = "all", shared_min_fraction: float = 1.0,
                      n_groups: int = 3, min_group_fraction: float = 0.5, group_method: str = "jaccard",
                      min_group_size: int = 3, min_group_size_fraction: float = 0.1,
                      min_confidence_change: float = 0.01, weight_fraction: float = 0.5,
                      opponent_fraction: float = 0.5, min_weight: float = 0.0,
                      min_presence_fraction: float = 0.5, min_contribution_fraction: float = 0.1,
                      min_shared_fraction: float = 0.25, background_sample_fraction: float = 0.9,
                      background_class_fraction: float = 0.9, max_removed_fraction: float = 0.5,
                      near_chance_margin: float = 0.2, min_checkpoints: int = 4, min_class_samples: int = 10,
                      min_pair_confusions: int = 10, max_noise_fraction: float = 0.5, cluster_labels=None,
                      random_state: int = 0, tau: float | None = None, lam: float | None = None,
                      min_cluster_size: int | None = None, min_samples: int | None = None,
                      lam_relative: bool | None = None, extra_parameters: dict | None = None) -> dict:
    """Everything in explanation.json (schema: docs/EXPLANATION.md; rules: docs/METHOD.md).
    `classes`: the K class names. `confusion`: the final model's test confusion matrix. `pair`:
    analyse this (a, b) instead of a pair chosen from `confusion`. cluster_labels: the HDBSCAN labels
    (T-1, N), for the MOSTLY_NOISE check. tau, lam, min_cluster_size, min_samples (the Eq. 5-8
    settings that produced W), lam_relative (whether lam was relative, fit_dynamics' relative_lam) and
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
    confusion = _check_confusion(confusion)
    if confusion.shape != (n_classes, n_classes):
        raise InvalidArgument(f"confusion shape {confusion.shape} must be (K, K) = {(n_classes, n_classes)}",
                              field="confusion")
    for name, value in (("min_checkpoints", min_checkpoints), ("min_class_samples", min_class_samples),
                        ("min_pair_confusions", min_pair_confusions)):
        _int_param(value, name, 0)
    near_chance_margin = _fraction(near_chance_margin, "near_chance_margin", allow_zero=True)
    max_noise_fraction = _fraction(max_noise_fraction, "max_noise_fraction", allow_zero=True)
    max_removed_fraction = _fraction(max_removed_fraction, "max_removed_fraction", allow_zero=True)
    for c in range(n_classes):  # fail up front, naming every class's count
        _class_members(labels, c, n_classes)

    background = background_prototypes(pres, labels, n_classes, background_sample_fraction, background_class_fraction)
    per_class = [
        class_explanation(c, presence=pres, labels=labels, confidences=confidences, W=W, steps=steps,
                          class_names=class_names, shared_min_fraction=shared_min_fraction, n_groups=n_groups,
                          min_group_fraction=min_group_fraction, min_confidence_change=min_confidence_change,
                          weight_fraction=weight_fraction, opponent_fraction=opponent_fraction,
                          min_weight=min_weight, group_method=group_method, random_state=random_state,
                          min_group_size=min_group_size, min_group_size_fraction=min_group_size_fraction,
                          background=background)
        for c in range(n_classes)
    ]

    accuracy, chance = accuracy_and_chance(confusion)
    at_chance = near_chance(accuracy, chance, near_chance_margin)
    # The final model's confusions on the explanation set break ties between equally confused test pairs.
    final_predictions = confidences[-1].argmax(axis=1)
    explanation_confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(explanation_confusion, (labels, final_predictions), 1)
    ranking = rank_confused_pairs(confusion, explanation_confusion)

    def counts(a: int, b: int) -> dict:
        return {"a": a, "b": b, "names": [class_names[a], class_names[b]], "count": int(confusion[a, b] + confusion[b, a]),
                "a_to_b": int(confusion[a, b]), "b_to_a": int(confusion[b, a])}

    given = None
    if pair is not None:
        if len(pair) != 2:
            raise InvalidArgument(f"expected two class indices (a, b), got {pair!r}", field="pair")
        given = sorted((_check_class(pair[0], n_classes, "pair"), _check_class(pair[1], n_classes, "pair")))
        if given[0] == given[1]:
            raise InvalidArgument(f"a pair needs two different classes, got a = b = {given[0]}", field="pair")
    if ranking:
        top = ranking[0]
        most_confused = {**counts(top["a"], top["b"]), "source": "confusion", "tie_break": top["tie_break"]}
    elif given is not None:  # nothing is confused on the test split: the caller's pair, with its count 0
        most_confused = {**counts(*given), "source": "given", "tie_break": None}
    else:
        most_confused_pair(confusion)  # raises: no confused pair and none given

    def analyse(a: int, b: int) -> dict:
        return pair_analysis(a, b, presence=pres, labels=labels, W=W, steps=steps, class_names=class_names,
                             min_presence_fraction=min_presence_fraction,
                             min_contribution_fraction=min_contribution_fraction,
                             min_shared_fraction=min_shared_fraction, background=background)

    def why_not(analysis: dict) -> str:
        tally = {cat: sum(1 for row in analysis["prototypes"] if row["category"] == cat)
                 for cat in ("reliable", "one-class", "background", "inactive")}
        return ("no prototype present in both classes alternates between them ("
                + ", ".join(f"{n} {cat}" for cat, n in tally.items()) + ")")

    skipped: list[dict] = []
    if given is not None:
        a, b = given
        analysis, reason = analyse(a, b), "given"
    else:
        a, b = most_confused["a"], most_confused["b"]
        analysis, reason = analyse(a, b), "most-confused"
        if analysis["uncertain_prototype"] is None and not at_chance:
            # Curation needs a confusing prototype: try the next most confused pairs, saying which were passed over.
            passed_over = [{"a": a, "b": b, "count": most_confused["count"], "why": why_not(analysis)}]
            for entry in ranking[1:]:
                candidate = analyse(entry["a"], entry["b"])
                if candidate["uncertain_prototype"] is not None:
                    a, b, analysis, reason, skipped = entry["a"], entry["b"], candidate, "next-confused", passed_over
                    break
                passed_over.append({"a": entry["a"], "b": entry["b"], "count": entry["count"],
                                    "why": why_not(candidate)})
    analysed = {**counts(a, b), "reason": reason, "skipped": skipped}

    warnings: list[dict] = []
    if at_chance:
        analysis["withheld"] = "NEAR_CHANCE_ACCURACY"
        analysis["uncertain_prototype"], analysis["uncertain_prototype_source"] = None, None
        warnings.append(_warning("NEAR_CHANCE_ACCURACY", (
            f"test accuracy {_pct(accuracy)} is near chance ({_pct(chance)} by always predicting the largest class): "
            "the model has learnt too little for its prototypes, pairs or curation to mean anything. "
            "Train longer (train.epochs) or check the data; no uncertain prototype is named.")))
    n_checkpoints = int(confidences.shape[0])
    if n_checkpoints < min_checkpoints:
        warnings.append(_warning("FEW_CHECKPOINTS", (
            f"only {n_checkpoints} checkpoints: {n_checkpoints - 1} step(s) of dynamics, too few to see a prototype "
            f"change sides; take at least {min_checkpoints} (lower train.checkpoint_every).")))
    if cluster_labels is not None:
        cluster_labels = np.asarray(cluster_labels)
        noise = float(np.mean(cluster_labels == -1)) if cluster_labels.size else 1.0
        if noise > max_noise_fraction:
            warnings.append(_warning("MOSTLY_NOISE", (
                f"{_pct(noise)} of the confidence changes are HDBSCAN noise and do not enter the mapping W: "
                "it rests on a minority of samples. Lower min_cluster_size or use a larger explanation set.")))
    small = [c for c in range(n_classes) if per_class[c]["n_samples"] < min_class_samples]
    if small:
        listed = ", ".join(f"'{class_names[c]}' {per_class[c]['n_samples']}" for c in small)
        warnings.append(_warning("FEW_CLASS_SAMPLES", (
            f"few explanation samples in {listed} (fewer than {min_class_samples}): shares such as "
            "'in 62% of' rest on a handful of images. Raise explanation_fraction.")))
    if analysed["count"] < min_pair_confusions:
        warnings.append(_warning("FEW_PAIR_CONFUSIONS", (
            f"the analysed pair '{class_names[a]}' / '{class_names[b]}' has only {analysed['count']} test "
            f"confusions (fewer than {min_pair_confusions}): changes in Table 1 of a few confusions are noise. "
            "Use a larger test split (dataset.test_fraction) or a harder task.")))
    if reason == "next-confused":
        top = skipped[0]
        warnings.append(_warning("MOST_CONFUSED_PAIR_SKIPPED", (
            f"the most confused pair '{class_names[top['a']]}' / '{class_names[top['b']]}' ({top['count']} test "
            f"confusions) has no uncertain prototype: {top['why']}. The analysis and curation use the next pair "
            f"that has one, '{class_names[a]}' / '{class_names[b]}' ({analysed['count']}).")))
    uncertain = analysis["uncertain_prototype"]
    if uncertain is None and not at_chance:
        where = "the given pair" if reason == "given" else "any confused pair"
        warnings.append(_warning("NO_UNCERTAIN_PROTOTYPE", (
            f"no prototype shared by both classes of {where} alternates between them (shared: in at least "
            f"{_pct(min_shared_fraction)} of each class): there is nothing to curate, so no curated set and no "
            "fine-tuning.")))
    curation = None
    if uncertain is not None:
        area = prototype_area(assignments, uncertain)
        curation = {
            "prototype": uncertain,
            "scope": curation_scope,
            "scopes": {scope: curation_summary(pres, labels, uncertain, scope, (a, b), n_classes=n_classes,
                                               max_removed_fraction=max_removed_fraction, area=area,
                                               class_names=class_names)
                       for scope in CURATION_SCOPES},
        }
        chosen = curation["scopes"][curation_scope]
        if chosen["limited"]:
            warnings.append(_warning("CURATION_LIMITED", chosen["message"]))

    parameters = {
        "n_prototypes": int(n_prototypes), "shared_min_fraction": float(shared_min_fraction),
        "n_groups": int(n_groups), "min_group_fraction": float(min_group_fraction), "group_method": group_method,
        "min_group_size": int(min_group_size), "min_group_size_fraction": float(min_group_size_fraction),
        "min_confidence_change": float(min_confidence_change), "weight_fraction": float(weight_fraction),
        "opponent_fraction": float(opponent_fraction), "min_weight": float(min_weight),
        "min_presence_fraction": float(min_presence_fraction),
        "min_contribution_fraction": float(min_contribution_fraction),
        "min_shared_fraction": float(min_shared_fraction),
        "background_sample_fraction": float(background_sample_fraction),
        "background_class_fraction": float(background_class_fraction),
        "max_removed_fraction": float(max_removed_fraction), "curation_scope": curation_scope,
        "near_chance_margin": float(near_chance_margin), "min_checkpoints": int(min_checkpoints),
        "min_class_samples": int(min_class_samples), "min_pair_confusions": int(min_pair_confusions),
        "max_noise_fraction": float(max_noise_fraction), "random_state": int(random_state),
    }
    recorded = {"tau": tau, "lam": lam, "lam_relative": lam_relative, "min_cluster_size": min_cluster_size,
                "min_samples": min_samples}
    parameters.update({name: value for name, value in recorded.items() if value is not None})
    parameters.update(_jsonable(extra_parameters or {}))
    starts, ends = _pair_steps(steps, confidences.shape[0] - 1)
    checkpoint_steps = starts + [ends[-1]] if ends and ends[-1] is not None else None
    return {
        "schema_version": SCHEMA_VERSION,
        "classes": class_names,
        "n_samples": int(len(labels)),
        "n_prototypes": int(n_prototypes),
        "n_checkpoints": n_checkpoints,
        "checkpoint_steps": checkpoint_steps,
        "pair_steps": starts,
        "samples_per_class": [int(v) for v in np.bincount(labels, minlength=n_classes)],
        "test_accuracy": accuracy,
        "chance_accuracy": chance,
        "parameters": parameters,
        "warnings": warnings,
        "background_prototypes": background,
        "per_class": per_class,
        "most_confused_pair": most_confused,
        "analysed_pair": analysed,
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
