"""Render every figure of a run (names -> PNG bytes) from its artifacts in the store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from i2x.report import figures as F
from i2x.report.run_data import ClassExplanation, RunData

MAX_LINES = 8           # prototypes drawn in one evolution figure
GALLERY_PAGE = 16       # prototype rows per page of the full gallery
EVENTS_PER_KEY = 3      # driving prototypes annotated per key checkpoint in the timeline


@dataclass
class Rendered:
    name: str           # file name under figures/
    png: bytes
    caption: str


def class_slug(c: int) -> str:
    return f"class-{c:02d}"


def class_members(run: RunData, c: int) -> np.ndarray:
    return np.flatnonzero(run.explanation_labels == c)


def mean_confidence(run: RunData, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps (T,), mean confidence of class c over its own samples (T,))."""
    steps, confidences = run.confidences
    return steps, confidences[:, class_members(run, c), c].mean(axis=1)


def evolution_prototypes(run: RunData, info: ClassExplanation) -> list[int]:
    """The shared prototypes to draw, the most intense at the final checkpoint first, at most MAX_LINES."""
    if not info.shared:
        return []
    _, intensity = run.intensity
    final = intensity[-1][class_members(run, info.index)].mean(axis=0)
    return sorted(info.shared, key=lambda m: (-final[m], m))[:MAX_LINES]


def timeline_events(run: RunData, info: ClassExplanation) -> list[tuple[int, int | None, list[tuple[int, list[str]]]]]:
    """(step, next step, [(prototype, opponent names)]) per key checkpoint: drivers with opponents
    first, the strongest first, at most EVENTS_PER_KEY each."""
    events = []
    for key in info.key_checkpoints:
        drivers = sorted(key.drivers, key=lambda d: (not d[2], -abs(d[1])))[:EVENTS_PER_KEY]
        events.append((key.step, key.next_step, [(m, [run.name(o) for o in opponents]) for m, _, opponents in drivers]))
    return events


def class_figures(run: RunData, info: ClassExplanation) -> list[Rendered]:
    c, name, slug = info.index, run.name(info.index), class_slug(info.index)
    steps, confidence = mean_confidence(run, c)
    intensity_steps, intensity = run.intensity
    shown = evolution_prototypes(run, info)
    members = class_members(run, c)
    mean_intensity = intensity[:, members][:, :, shown].mean(axis=1) if shown else np.zeros((len(steps), 0))
    following = dict(zip(intensity_steps[:-1].tolist(), intensity_steps[1:].tolist()))
    out = []
    fig = F.class_evolution(intensity_steps, mean_intensity, shown, confidence, class_name=name,
                            key_steps=[k.step for k in info.key_checkpoints], next_steps=following)
    more = len(info.shared) - len(shown)
    out.append(Rendered(f"{slug}-evolution.png", F.to_png(fig),
                        f"Fig. 3 for '{name}': mean intensity of its shared prototypes over its {len(members)} "
                        "samples (left axis) and its mean confidence (dashed, right axis); shaded: key checkpoints."
                        + (f" The {more} least intense shared prototypes are left out." if more > 0 else "")))
    fig = F.class_timeline(steps, confidence, timeline_events(run, info), class_name=name)
    out.append(Rendered(f"{slug}-timeline.png", F.to_png(fig),
                        f"Fig. 4 for '{name}': its confidence over training, each key checkpoint numbered with the "
                        "prototype that drove the change and the classes it separated."))
    gallery_protos = list(dict.fromkeys(info.shared + info.specialized_all))[:12]
    if gallery_protos:
        highlight = {m: "shared" for m in info.shared}
        sub = members
        fig = F.prototype_gallery(run.explanation_images[sub], run.final_saliency[sub], run.assignments[sub],
                                  gallery_protos, labels=run.explanation_labels[sub], class_names=run.class_names,
                                  highlight=highlight, title=f"Prototypes of '{name}'", sample_ids=sub)
        out.append(Rendered(f"{slug}-gallery.png", F.to_png(fig),
                            f"Fig. 9 for '{name}': its shared and specialized prototypes as they appear in its own "
                            "samples (crops around positions assigned to each prototype, final saliency overlaid)."))
    return out


def pair_figures(run: RunData) -> list[Rendered]:
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    if pair is None:
        return []
    a, b = pair.a, pair.b
    steps, D = run.pair_contributions(a, b)
    slug = f"pair-{a:02d}-{b:02d}"
    uncertain = pair.uncertain or ([pair.uncertain_prototype] if pair.uncertain_prototype is not None else [])
    # With no unsupported flip, the explanation names the most alternating (compensated) prototype.
    label = "uncertain" if pair.uncertain else "most alternating, compensated"
    fig = F.pair_contributions(steps, D, name_a=run.name(a), name_b=run.name(b), reliable=pair.reliable[:6],
                               uncertain=uncertain[:3], uncertain_label=label)
    out = [Rendered(f"{slug}-contributions.png", F.to_png(fig),
                    f"Fig. 5-7: each prototype's contribution to '{run.name(a)}' versus '{run.name(b)}' at each "
                    "step (above zero: towards the first class). Coloured solid lines: reliable prototypes; "
                    "dashed: uncertain.")]
    protos = list(dict.fromkeys(uncertain[:3] + pair.reliable[:5]))
    if protos:
        sub = np.flatnonzero(np.isin(run.explanation_labels, [a, b]))
        highlight = {m: "uncertain" if pair.uncertain else "alternating" for m in uncertain[:3]}
        fig = F.prototype_gallery(run.explanation_images[sub], run.final_saliency[sub], run.assignments[sub], protos,
                                  labels=run.explanation_labels[sub], class_names=run.class_names,
                                  highlight=highlight, title=f"'{run.name(a)}' vs '{run.name(b)}'",
                                  sample_ids=sub)
        out.append(Rendered(f"{slug}-gallery.png", F.to_png(fig),
                            f"Fig. 9 for the pair: the uncertain and reliable prototypes in samples of "
                            f"'{run.name(a)}' and '{run.name(b)}'."))
    return out


def confusion_panels(run: RunData, label: str | None = None) -> list[tuple[str, np.ndarray]]:
    """Before (evaluation/final.npz) and, when the fine-tuning table has one, after fine-tuning."""
    prefix = f"{label}: " if label else ""
    panels = [(f"{prefix}final model (test split)", run.confusion)]
    after = run.finetuned_confusion()
    if after is not None and label is None:
        repeats = (run.finetune_table or {}).get("repeats")
        mean = f", mean of {repeats} repeats" if repeats and repeats > 1 else ""
        panels.append((f"after fine-tuning ({after[0]}{mean})", after[1]))
    return panels


def run_pair(run: RunData) -> tuple[int, int] | None:
    explanation = run.explanation
    return (explanation.pair.a, explanation.pair.b) if explanation and explanation.pair else None


def overview_figures(run: RunData) -> list[Rendered]:
    out = []
    if run.has("evaluation", "final.npz"):
        panels = confusion_panels(run)
        fig = F.confusion_matrices(panels, run.class_names, pair=run_pair(run))
        out.append(Rendered("confusion.png", F.to_png(fig),
                            "Fig. 8: confusion matrices on the test split (rows: true class, columns: predicted)"
                            + (", before and after fine-tuning." if len(panels) > 1 else ".")))
    table = run.finetune_table
    if table and table.get("rows"):
        pair = run_pair(run)
        names = (run.name(pair[0]), run.name(pair[1])) if pair else None
        rows = list(table["rows"])
        if table.get("baseline"):
            rows.insert(0, {"protocol": "final model (no fine-tuning)", **table["baseline"]})
        out.append(Rendered("finetune-table.png", F.to_png(F.finetune_table(rows, pair_names=names)),
                            "Table 1: fine-tuning protocols from the final model."))
    return out


def gallery_figures(run: RunData) -> list[Rendered]:
    M = run.n_prototypes
    pages = [list(range(start, min(start + GALLERY_PAGE, M))) for start in range(0, M, GALLERY_PAGE)]
    out = []
    for n, protos in enumerate(pages):
        title = "Prototype gallery" + (f" ({n + 1}/{len(pages)})" if len(pages) > 1 else "")
        fig = F.prototype_gallery(run.explanation_images, run.final_saliency, run.assignments, protos,
                                  labels=run.explanation_labels, class_names=run.class_names, title=title)
        out.append(Rendered(f"gallery-{n + 1:02d}.png", F.to_png(fig),
                            f"Fig. 9: prototypes P-{protos[0]} to P-{protos[-1]} over the whole explanation set."))
    return out


def render_all(run: RunData) -> dict[str, list[Rendered]]:
    """Every figure of the run, grouped by report section: overview, classes (by index), pair, gallery."""
    groups: dict[str, list[Rendered]] = {"overview": overview_figures(run), "pair": [], "gallery": []}
    explanation = run.explanation
    if explanation is not None:
        for c, info in sorted(explanation.classes.items()):
            groups[class_slug(c)] = class_figures(run, info)
        groups["pair"] = pair_figures(run)
    if run.has("clustering", "prototypes.npz") and run.interpretation_steps:
        groups["gallery"] = gallery_figures(run)
    return groups
