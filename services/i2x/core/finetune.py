"""Fine-tuning protocols of the paper's section 3.5 (Table 1).

Every protocol starts from the final model. A stage is one epoch on the full explanation set
("full") or on the curated set ("curated"); "a->b" runs stage a then stage b. Each protocol is
repeated R times; repeat r seeds its data order with ``seed + r`` (stage i of a protocol uses
``seed + r + 10_000 * i`` so that full->full does not replay one order twice). The same repeat
uses the same seeds in every protocol, so protocols differ only in their data.

Reported per protocol: test accuracy and the pair's confusions a->b (true a predicted b), b->a and
their sum, as mean and sample standard deviation (ddof=1; 0 for a single repeat) over repeats.
Accuracy is a fraction in the JSON and a percentage in the Markdown table.

add_statistics (on the finished table, whatever ran it): a 95% confidence interval of the mean
per cell (Student's t, n - 1 degrees of freedom) and Welch's t test of curated->full against
full->full on the pair's confusions and on accuracy, worded "not significant" when p >= 0.05;
optionally the share of each class the curated set removed. table_markdown shows all of it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch import nn

from i2x.core.errors import Cancelled, InvalidArgument
from i2x.core.training import TrainConfig, evaluate, train

PROTOCOLS = ("full", "curated", "full->full", "curated->curated", "curated->full")
_STAGE_SEED_STRIDE = 10_000
_METRICS = ("accuracy", "a_to_b", "b_to_a", "sum")


def protocol_runs(protocols, repeats: int) -> list[tuple[str, int]]:
    """The independent units of Table 1, in table order: (protocol, repeat) for every repeat."""
    return [(protocol, r) for protocol in protocols for r in range(repeats)]


def stages_of(protocol: str) -> list[str]:
    return protocol.split("->")


def finetune_once(build: Callable[[], nn.Module], final_state: dict, full, curated, test, pair: tuple[int, int],
                  protocol: str, repeat: int, *, mean, std, lr: float = 1e-4, batch_size: int = 64,
                  optimizer: str = "adam", seed: int = 0, device: str = "cpu", on_stage=None,
                  cancel=None) -> dict:
    """One (protocol, repeat) of Table 1 from `final_state`: its stages, then the test metrics.

    Depends on nothing but its arguments (seeds seed + repeat + 10_000 * stage), so the units can run
    in any order, in any process: a Ray fan-out gives the serial run's numbers.
    Returns {"seed", "accuracy", "a_to_b", "b_to_a", "sum", "confusion"}; on_stage(stage) after each stage.
    """
    from i2x.models import load_weights

    a, b = int(pair[0]), int(pair[1])
    stage_sets = {"full": full, "curated": curated}
    model = build()
    load_weights(model, final_state)
    for i, stage in enumerate(stages_of(protocol)):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"fine-tuning cancelled during {protocol} repeat {repeat + 1}")
        config = TrainConfig(preset="finetune", epochs=1, batch_size=batch_size, lr=lr, optimizer=optimizer,
                             schedule="constant", checkpoint_every=10**9, seed=seed + repeat + _STAGE_SEED_STRIDE * i,
                             device=device)
        train(model, stage_sets[stage], config, mean=mean, std=std, on_checkpoint=lambda _c: None, cancel=cancel)
        if on_stage is not None:
            on_stage(stage)
    return {"seed": seed + repeat, **_pair_metrics(model, test, a, b, mean, std)}


def _pair_metrics(model, test, a: int, b: int, mean, std) -> dict:
    result = evaluate(model, test, mean=mean, std=std)
    confusion = result["confusion"]
    a_to_b, b_to_a = int(confusion[a, b]), int(confusion[b, a])
    return {"accuracy": result["accuracy"], "a_to_b": a_to_b, "b_to_a": b_to_a, "sum": a_to_b + b_to_a,
            "confusion": confusion}


def run_protocols(build: Callable[[], nn.Module], final_state: dict, full, curated, test, pair: tuple[int, int], *,
                  mean, std, protocols=PROTOCOLS, repeats: int = 5, lr: float = 1e-4, batch_size: int = 64,
                  optimizer: str = "adam", seed: int = 0, device: str = "cpu", progress=None, cancel=None,
                  map_runs=None) -> dict:
    """Run `protocols` x `repeats` fine-tunings from `final_state` and evaluate each on `test`.

    map_runs(units, inputs, options) -> iterable of the results of
    finetune_once(**inputs, protocol=, repeat=, **options), one per (protocol, repeat) of `units`, in
    that order (i2x.training.ray_tasks fans them out as Ray tasks); default: here, in turn.
    """
    from i2x.core.device import resolve_device
    from i2x.models import load_weights

    a, b = _validate(pair, protocols, repeats, full, curated, test)
    total = repeats * sum(len(stages_of(p)) for p in protocols)
    done = 0

    baseline_model = build()
    load_weights(baseline_model, final_state)
    baseline_model.to(resolve_device(device))
    baseline = _pair_metrics(baseline_model, test, a, b, mean, std)
    baseline_confusion = baseline.pop("confusion")
    confusions = {}  # protocol -> confusion matrix averaged over the repeats (Fig. 8, after fine-tuning)

    units = protocol_runs(protocols, repeats)
    inputs = {"build": build, "final_state": final_state, "full": full, "curated": curated, "test": test,
              "pair": (a, b)}
    options = {"mean": mean, "std": std, "lr": lr, "batch_size": batch_size, "optimizer": optimizer, "seed": seed,
               "device": device}
    if map_runs is None:
        def map_runs(todo, inputs, options):
            def on_stage(protocol, r, stage):
                nonlocal done
                done += 1
                if progress is not None:
                    progress(done, total, f"{protocol} repeat {r + 1}/{repeats} stage {stage}")

            for protocol, r in todo:
                yield finetune_once(protocol=protocol, repeat=r, cancel=cancel,
                                    on_stage=lambda stage, p=protocol, r=r: on_stage(p, r, stage), **inputs, **options)

    by_protocol: dict[str, list[dict]] = {p: [] for p in protocols}
    results = list(map_runs(units, inputs, options))
    if len(results) != len(units):  # a fan-out that lost a unit must not shrink the table unseen
        raise RuntimeError(f"fine-tuning returned {len(results)} of {len(units)} runs")
    for (protocol, _r), run in zip(units, results):
        by_protocol[protocol].append(run)

    rows = []
    for protocol in protocols:
        runs = by_protocol[protocol]
        matrices = [run.pop("confusion") for run in runs]
        confusions[protocol] = np.mean(matrices, axis=0).tolist()
        row = {"protocol": protocol}
        row.update({metric: _mean_std([run[metric] for run in runs]) for metric in _METRICS})
        row["runs"] = runs
        rows.append(row)
    return {"pair": [a, b], "rows": rows, "repeats": repeats, "baseline": baseline,
            "confusions": {"final": baseline_confusion.tolist(), **confusions},
            "settings": {"lr": lr, "batch_size": batch_size, "optimizer": optimizer, "seed": seed,
                         "epochs_per_stage": 1, "n_full": len(full), "n_curated": len(curated), "n_test": len(test)}}


def table_markdown(result: dict, classes: list[str]) -> str:
    """Table 1 as Markdown: one row per protocol, "mean ± std [95% interval]"; accuracy in percent;
    then Welch's test of curated → full against full → full and the curated set's removed shares."""
    if not all("ci95" in row for row in result["rows"]) or "tests" not in result:
        result = add_statistics(result)
    a, b = result["pair"]
    name_a, name_b = classes[a], classes[b]
    lines = [f"| protocol | Acc. (%) | {name_a}→{name_b} | {name_b}→{name_a} | sum |", "|---|---|---|---|---|"]
    base = result.get("baseline")
    if base:
        lines.append(f"| final model (no fine-tuning) | {100 * base['accuracy']:.2f} | {base['a_to_b']} | "
                     f"{base['b_to_a']} | {base['sum']} |")

    def cell(row, metric: str, factor: float = 1.0) -> str:
        text = f"{factor * row[metric]['mean']:.2f} ± {factor * row[metric]['std']:.2f}"
        low, high = row["ci95"][metric]
        return text if low is None else text + f" [{factor * low:.2f}, {factor * high:.2f}]"

    for row in result["rows"]:
        cells = [cell(row, "accuracy", 100.0)] + [cell(row, m) for m in ("a_to_b", "b_to_a", "sum")]
        lines.append(f"| {row['protocol'].replace('->', ' → ')} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± sample std [95% confidence interval of the mean] over {result['repeats']} repeats; "
                 "a→b counts test images of class a predicted as b.")
    for test in result["tests"]:
        lines.append("")
        lines.append(test["text"])
    removed = result.get("removed_fraction_per_class")
    if removed:
        lines.append("")
        lines.append(removed_text(removed, classes))
    return "\n".join(lines) + "\n"


# -- statistics on the finished table -----------------------------------------------------------
SIGNIFICANCE = 0.05
_TESTED = ("curated->full", "full->full")


def interval95(values) -> tuple[float | None, float | None]:
    """95% confidence interval of the mean of `values`: mean ± t(0.975, n-1) x s / sqrt(n);
    (None, None) for fewer than 2 values."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None, None
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    mean = float(values.mean())
    return mean - half, mean + half


def welch_test(x, y) -> dict:
    """Welch's unequal-variance t test of mean(x) = mean(y): {"t", "p", "df"}; t and p are None when
    it cannot be computed (fewer than 2 values in a group, or no variation in either)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2 or (x.std() == 0 and y.std() == 0):
        return {"t": None, "p": None, "df": None}
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    result = stats.ttest_ind(x, y, equal_var=False)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return {"t": float(result.statistic), "p": float(result.pvalue), "df": float(df)}


def _test_text(metric: str, label: str, x, y, test: dict, unit: str = "") -> str:
    head = (f"Welch's t test, curated → full vs full → full, {label}: {np.mean(x):.2f}{unit} vs "
            f"{np.mean(y):.2f}{unit}")
    if test["p"] is None:
        return head + " — cannot be tested (needs 2 or more repeats with some variation)."
    verdict = "significant" if test["p"] < SIGNIFICANCE else "not significant"
    return head + f", t = {test['t']:.2f}, p = {test['p']:.3f}: {verdict} at the 5% level."


def removed_fraction_per_class(labels, kept, n_classes: int) -> list[float]:
    """Share of each class's samples of the full set (labels) that the curated set (kept indices) lacks."""
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels, minlength=n_classes)
    kept_sizes = np.bincount(labels[np.asarray(kept, dtype=np.int64)], minlength=n_classes)
    return [float((s - k) / s) if s else 0.0 for s, k in zip(sizes, kept_sizes)]


def removed_text(removed: list[float], classes: list[str]) -> str:
    hit = [f"{100 * f:.0f}% of '{classes[c]}'" for c, f in enumerate(removed) if f > 0]
    if not hit:
        return "Removed by curation: no sample."
    text = "Removed by curation: " + ", ".join(hit)
    return text + ("." if len(hit) == len(classes) else "; nothing of the other classes.")


def add_statistics(table: dict, *, removed_fraction_per_class: list[float] | None = None) -> dict:
    """A copy of run_protocols' table with, per row, "ci95": {metric: [low, high]} from its runs;
    "tests": Welch's t test of curated->full against full->full on the pair's confusion sum and on
    accuracy (each {"compared", "metric", "t", "p", "df", "significant", "text"}; empty when either
    protocol is missing); and "removed_fraction_per_class" when given."""
    out = dict(table)
    rows = []
    for row in table["rows"]:
        row = dict(row)
        runs = row.get("runs") or []
        row["ci95"] = {m: list(interval95([r[m] for r in runs])) for m in _METRICS}
        rows.append(row)
    out["rows"] = rows
    by_protocol = {row["protocol"]: row for row in rows}
    tests = []
    if all(p in by_protocol and by_protocol[p].get("runs") for p in _TESTED):
        for metric, label, factor, unit in (("sum", "the pair's confusions", 1.0, ""),
                                            ("accuracy", "accuracy", 100.0, "%")):
            x = [factor * r[metric] for r in by_protocol[_TESTED[0]]["runs"]]
            y = [factor * r[metric] for r in by_protocol[_TESTED[1]]["runs"]]
            test = welch_test(x, y)
            tests.append({"compared": list(_TESTED), "metric": metric, **test,
                          "significant": None if test["p"] is None else bool(test["p"] < SIGNIFICANCE),
                          "text": _test_text(metric, label, x, y, test, unit)})
    out["tests"] = tests
    if removed_fraction_per_class is not None:
        out["removed_fraction_per_class"] = [float(v) for v in removed_fraction_per_class]
    return out


def _mean_std(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}


def _validate(pair, protocols, repeats, full, curated, test) -> tuple[int, int]:
    if len(pair) != 2 or int(pair[0]) == int(pair[1]):
        raise InvalidArgument(f"pair must be two different classes, got {pair}", field="pair")
    a, b = int(pair[0]), int(pair[1])
    k = len(test.classes)
    if not (0 <= a < k and 0 <= b < k):
        raise InvalidArgument(f"pair classes must be in 0..{k - 1}, got {pair}", field="pair")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise InvalidArgument(f"unknown protocols {unknown or list(protocols)}; choose from {list(PROTOCOLS)}",
                              field="protocols")
    if repeats < 1:
        raise InvalidArgument(f"repeats must be >= 1, got {repeats}", field="repeats")
    if len(full) == 0:
        raise InvalidArgument("the full fine-tuning set is empty", field="full")
    if any("curated" in p for p in protocols) and len(curated) == 0:
        raise InvalidArgument("the curated set is empty (every sample contains the uncertain prototype); "
                              "curate from the pair's classes only or drop the curated protocols",
                              field="curated")
    if len(test) == 0:
        raise InvalidArgument("the test set is empty", field="test")
    return a, b
