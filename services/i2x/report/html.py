"""The self-contained HTML report: inline CSS, images as data: URIs, no script, font or link
to anything outside the file. Every sentence is generated from the run's explanation."""

from __future__ import annotations

import base64
from html import escape

import numpy as np

from i2x.report.build import Rendered, class_slug, keys_note, listed_keys, mean_confidence
from i2x.report.figures import format_mean_std
from i2x.report.run_data import ClassExplanation, RunData

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.7em;margin:0.2em 0 0.1em}h2{border-bottom:2px solid #dfe4ea;padding-bottom:4px;margin-top:2em}
h3{margin-bottom:0.3em}
.subtitle{color:#5a6474;margin-top:0}
table{border-collapse:collapse;margin:0.6em 0 1em}th,td{border:1px solid #d4d9e0;padding:4px 10px;text-align:left;
vertical-align:top}th{background:#eef2f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0 1.6em}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:0.9em;color:#4a5262;margin-top:4px}
.answers{background:#f2f6fb;border-left:4px solid #0072B2;padding:8px 16px;margin:0.8em 0}
.answers dt{font-weight:600;margin-top:0.5em}.answers dd{margin:0.1em 0 0.3em 0}
.warn{color:#b24a00;font-weight:600}.proto{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600;white-space:nowrap;
color:#0b4f8a;text-decoration:none;border-bottom:1px dotted #0b4f8a}
.banner{background:#fff4e5;border:2px solid #d55e00;border-radius:6px;padding:8px 16px;margin:1em 0}
.banner h2{border:0;margin:0.2em 0;font-size:1.15em;color:#8a3300}.banner code{font-weight:600}
.trust{background:#f2f6fb;border-left:4px solid #0072B2;padding:8px 16px;margin:1em 0}
.trust h2{border:0;margin:0.3em 0;font-size:1.2em}
table.gallery td,table.gallery th{border:0;border-bottom:1px solid #e3e6ea;padding:4px 8px}
table.gallery th{background:none;width:9em;font-weight:normal}table.gallery img{border:0;image-rendering:pixelated}
tr:target th,tr:target td{background:#fff6cc}
.strip img{image-rendering:pixelated;max-width:100%}
nav ul{columns:3;padding-left:1.2em}
.side{display:grid;grid-template-columns:1fr 1fr;gap:18px}.side>div{min-width:0}
.note{color:#5a6474;font-size:0.92em}
"""


def p(m: int, prefix: str = "") -> str:
    """A prototype's name, linked to its row of the gallery (anchor `<prefix>proto-m`)."""
    return f'<a class="proto" href="#{prefix}proto-{int(m)}">P-{int(m)}</a>'


def plist(prototypes, prefix: str = "") -> str:
    prototypes = list(prototypes)
    return ", ".join(p(m, prefix) for m in prototypes) if prototypes else "none"


def share(x: float | None) -> str:
    """A support as a whole percent ("62%"); below 1% but present: "<1%"."""
    if x is None:
        return "?%"
    if 0 < x < 0.005:
        return "&lt;1%"
    return f"{100 * x:.0f}%"


def support(run: RunData, c: int, m: int) -> str:
    """'in 62% of '7'': the share of class c's explanation samples holding prototype m."""
    return f"in {share(run.presence(c, m))} of {q(run.name(c))}"


def psup(run: RunData, m: int, classes, prefix: str = "") -> str:
    """P-m (in x% of 'a', y% of 'b')."""
    parts = [f"{share(run.presence(c, m))} of {q(run.name(c))}" for c in classes]
    return f"{p(m, prefix)} (in " + ", ".join(parts) + ")" if parts else p(m, prefix)


def q(text) -> str:
    """A class name quoted and escaped."""
    return f"&lsquo;{escape(str(text))}&rsquo;"


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def figure(rendered: Rendered) -> str:
    return (f'<figure id="fig-{escape(rendered.name[:-4])}">{img_tag(rendered.png, rendered.caption)}'
            f"<figcaption>{escape(rendered.caption)}</figcaption></figure>")


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def percent(x: float | None) -> str:
    return "unknown" if x is None else f"{100 * x:.2f}%"


# -- overview -----------------------------------------------------------------------------------
def describe_model(meta: dict) -> str:
    model = meta.get("model") or {}
    text = escape(str(model.get("arch", model.get("name", "model"))))
    extra = {k: model[k] for k in ("num_classes", "in_channels", "image_size") if k in model}
    if extra:
        text += " (" + ", ".join(f"{k.replace('_', ' ')} {escape(str(v))}" for k, v in extra.items()) + ")"
    if meta.get("target_layer"):
        text += f"; saliency at layer <code>{escape(str(meta['target_layer']))}</code>"
    return text


def describe_data(meta: dict, run: RunData) -> str:
    dataset = meta.get("dataset") or {}
    name = dataset.get("name", dataset.get("kind", "dataset"))
    sizes = meta.get("sizes") or {}
    text = escape(str(name))
    if sizes:
        text += " &mdash; " + ", ".join(f"{escape(k)} {int(v):,}" for k, v in sizes.items()) + " images"
    return text + f"; {len(run.class_names)} classes: " + ", ".join(q(n) for n in run.class_names)


def curation_text(run: RunData) -> str:
    explanation = run.explanation
    curation = explanation.curation if explanation else None
    if not curation:
        return "No curation: the explanation found no uncertain prototype to remove."
    scope = curation.get("scope", "all")
    summary = (curation.get("scopes") or {}).get(scope) or curation
    removed = summary.get("removed_per_class") or []
    fractions = summary.get("removed_fraction_per_class")
    counts = run.explanation.raw.get("samples_per_class") or []
    parts = []
    for c, n in enumerate(removed):
        if not n:
            continue
        fraction = fractions[c] if fractions and c < len(fractions) else (n / counts[c] if c < len(counts) and counts[c]
                                                                          else None)
        parts.append(f"{int(n)} of {q(run.name(c))}" + (f" ({share(fraction)} of the class)" if fraction is not None
                                                       else ""))
    where = "from every class" if scope == "all" else "from the pair's two classes only"
    text = (f"Removed the samples whose assignment map contains {p(curation['prototype'])} {where}: "
            f"{summary.get('size_before', '?')} &rarr; {summary.get('size_after', '?')} samples "
            f"({summary.get('removed', '?')} removed{': ' + ', '.join(parts) if parts else ''}).")
    if curation.get("limited"):
        cap = curation.get("cap")
        text += (" The removal was limited" + (f" to the cap of {share(cap)} of any class" if cap is not None else "")
                 + ".")
    wiped = [c for c, n in enumerate(removed) if n and c < len(counts) and n >= counts[c] > 0]
    if wiped:
        text += (' <span class="warn">Every sample of ' + ", ".join(q(run.name(c)) for c in wiped)
                 + " was removed: fine-tuning on the curated set never sees that class.</span>")
    return text


def pair_counts(run: RunData, a: int, b: int, count, a_to_b, b_to_a) -> str:
    """"3 test confusions (2 '4'→'9', 1 '9'→'4')"."""
    if count is None and a_to_b is not None and b_to_a is not None:
        count = int(a_to_b) + int(b_to_a)
    text = f"{count} test confusion{'s' if count != 1 else ''}" if count is not None else "test confusions unknown"
    if a_to_b is not None and b_to_a is not None:
        text += (f" ({a_to_b} {q(run.name(a))}&rarr;{q(run.name(b))}, "
                 f"{b_to_a} {q(run.name(b))}&rarr;{q(run.name(a))})")
    return text


def most_confused_text(run: RunData) -> str | None:
    most = run.explanation.most_confused if run.explanation else None
    if most is None:
        return None
    a_to_b, b_to_a = most.a_to_b, most.b_to_a
    if (a_to_b is None or b_to_a is None) and run.has("evaluation", "final.npz"):
        # schema 1 records only the count of a pair it passed over: the directions are in the matrix
        a_to_b, b_to_a = int(run.confusion[most.a, most.b]), int(run.confusion[most.b, most.a])
    text = (f"{q(run.name(most.a))} / {q(run.name(most.b))}: "
            + pair_counts(run, most.a, most.b, most.count, a_to_b, b_to_a))
    ties = tied_pairs(run, most)
    if ties:
        text += ("; tied with " + ", ".join(f"{q(run.name(a))} / {q(run.name(b))}" for a, b in ties)
                 + (f", the tie broken by {escape(str(most.tie_break))}" if most.tie_break else ""))
    return text


def tied_pairs(run: RunData, most) -> list[tuple[int, int]]:
    """Other pairs with as many test confusions (both directions) as the most confused one."""
    if not run.has("evaluation", "final.npz") or most.count is None:
        return []
    C = run.confusion
    K = C.shape[0]
    return [(a, b) for a in range(K) for b in range(a + 1, K)
            if {a, b} != {most.a, most.b} and int(C[a, b] + C[b, a]) == int(most.count)]


REASONS = {"next-confused": "the more confused pairs have no uncertain prototype to analyse",
           "given": "it was chosen by the caller",
           "most-confused": "it is the most confused pair"}


def analysed_text(run: RunData) -> str | None:
    """The analysed pair and why, never calling it the most confused unless it is."""
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    if pair is None:
        return None
    most = explanation.most_confused
    same = most is not None and {most.a, most.b} == {pair.a, pair.b}
    names = f"{q(run.name(pair.a))} / {q(run.name(pair.b))}"
    if same:
        return f"{names}, the most confused pair"
    text = f"{names} with {pair_counts(run, pair.a, pair.b, pair.count, pair.a_to_b, pair.b_to_a)}, "
    reason = REASONS.get(pair.reason, escape(pair.reason))
    text += "not the most confused pair: " + reason
    if pair.skipped:
        text += " (passed over: " + ", ".join(
            f"{q(run.name(int(s['a'])))} / {q(run.name(int(s['b'])))} with {s.get('count', '?')}"
            for s in pair.skipped if s.get("a") is not None) + ")"
    return text


def placement_text(run: RunData) -> str | None:
    """'node 3f2a (cuda:0): 10 checkpoints, 12.3 s; ...' from interpretation/index.json, if recorded."""
    entries = run.placement
    if not entries:
        return None
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        groups.setdefault((entry["node"], entry["device"]), []).append(entry)
    parts = []
    for (node, device), items in groups.items():
        where = (f"node <code>{escape(node)}</code>" if node else "an unnamed node") + (
            f" ({escape(device)})" if device else "")
        seconds = [e["seconds"] for e in items if e["seconds"] is not None]
        parts.append(f"{where}: {len(items)} checkpoint{'s' if len(items) != 1 else ''}"
                     + (f", {sum(seconds):.1f} s" if seconds else ""))
    return "; ".join(parts)


def overview(run: RunData) -> str:
    meta = run.meta
    explanation = run.explanation
    steps = run.interpretation_steps or [c.get("step") for c in run.checkpoints]
    rows = [("Run", f"<code>{escape(run.run_id)}</code> in <code>{escape(run.store.url)}</code>"),
            ("Model", describe_model(meta)),
            ("Data", describe_data(meta, run)),
            ("Checkpoints", f"{len(steps)} (steps {escape(', '.join(str(s) for s in steps[:12]))}"
                            f"{', &hellip;' if len(steps) > 12 else ''})" if steps else "none yet"),
            ("Test accuracy", percent(run.accuracy))]
    placed = placement_text(run)
    if placed:
        rows.append(("Interpretation ran on", placed))
    if explanation is not None:
        rows.append(("Prototypes", f"{explanation.raw.get('n_prototypes', run.n_prototypes)} abstract prototypes "
                                   f"over {explanation.raw.get('n_samples', '?')} explanation samples"))
        most = most_confused_text(run)
        if most:
            rows.append(("Most confused pair", most))
        if explanation.pair is not None:
            rows.append(("Analysed pair", analysed_text(run)))
            rows.append(("Uncertain prototype", uncertain_text(run)))
        if explanation.background:
            rows.append(("Background prototypes", background_text(run)))
        rows.append(("Curation", curation_text(run)))
    table = run.finetune_table
    if table and table.get("rows"):
        rows.append(("Fine-tuning", finetune_summary(run)))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<section id="overview"><h2>Overview</h2><table>{body}</table></section>'


def uncertain_text(run: RunData) -> str:
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    m = explanation.uncertain_prototype if explanation else None
    if pair is None or m is None:
        return "none found"
    names = f"{q(run.name(pair.a))} and {q(run.name(pair.b))}"
    named = psup(run, m, (pair.a, pair.b))
    if pair.uncertain_source == "compensated":
        return (f"{named}: it alternates between {names}, but every flip is carried by another prototype; "
                "no prototype flips unsupported, so this is the most alternating one (a weaker finding)")
    return f"{named}: its contribution flips between {names} with no other prototype supporting the decision"


def background_text(run: RunData) -> str:
    background = run.explanation.background
    return (f"{plist(background)}: present in nearly every sample of nearly every class (the image's "
            "background, e.g. empty corners), so never counted as evidence for a class nor used to curate")


def warnings_banner(run: RunData) -> str:
    explanation = run.explanation
    if explanation is None:
        return ""
    if explanation.warnings:
        items = "".join(f"<li><code>{escape(w['code'])}</code>: {escape(w['message'])}</li>"
                        for w in explanation.warnings)
        return (f'<div class="banner" id="warnings"><h2>{len(explanation.warnings)} warning'
                f"{'s' if len(explanation.warnings) != 1 else ''}: read this explanation with care</h2>"
                f"<ul>{items}</ul></div>")
    if "warnings" in explanation.raw:
        return ('<p class="note" id="warnings">No sanity warning: accuracy, checkpoints, test confusions of the pair, '
                "HDBSCAN noise and samples per class passed the checks of docs/EXPLANATION.md.</p>")
    return ('<p class="note" id="warnings">This explanation was written before the sanity checks existed '
            "(no <code>warnings</code> in explanation.json): nothing was checked; re-run the explanation stage.</p>")


def trust_section(run: RunData) -> str:
    """What can be trusted, first: warnings, the true most confused pair, the analysed pair and
    its uncertain prototype with their support, background prototypes, the fine-tuning verdict."""
    explanation = run.explanation
    if explanation is None:
        return ""
    items = []
    most = most_confused_text(run)
    if most:
        items.append(f"<li>Most confused pair on the test split: {most}.</li>")
    pair = explanation.pair
    if pair is not None:
        items.append(f"<li>Analysed pair: {analysed_text(run)}.</li>")
        items.append(f"<li>Uncertain prototype: {uncertain_text(run)}.</li>")
    elif most:
        items.append("<li>No pair was analysed, so there is no uncertain prototype.</li>")
    if explanation.background:
        items.append(f"<li>Background prototypes, listed apart: {background_text(run)}.</li>")
    table = run.finetune_table
    if table and table.get("rows"):
        items.append(f"<li>Fine-tuning: {finetune_summary(run)}</li>")
    return (warnings_banner(run) + '<section class="trust" id="trust"><h2>What this report finds</h2>'
            f"<ul>{''.join(items)}</ul></section>")


# -- per class ----------------------------------------------------------------------------------
def class_answers(run: RunData, info: ClassExplanation) -> str:
    """The four questions of the issue, answered in words from the explanation."""
    c, name = info.index, q(run.name(info.index))
    background = set(run.explanation.background) if run.explanation else set()

    def named(m: int) -> str:
        return f"{p(m)} ({support(run, c, m)}{'; background' if m in background else ''})"

    relies = (f"{', '.join(named(m) for m in info.shared)}: shared by its {info.n_samples} samples"
              if info.shared else f"no prototype is shared by its {info.n_samples} samples")
    groups = [g for g in info.specialized if g["prototypes"]]
    if groups:
        relies += "; besides, " + "; ".join(f"a group of {g['size']} samples also shows "
                                              + ", ".join(named(m) for m in g["prototypes"]) for g in groups)
    relies += "."
    if info.key_checkpoints:
        steps_seen = []
        checkpoint_steps = run.intensity[0].tolist()
        following = dict(zip(checkpoint_steps[:-1], checkpoint_steps[1:]))
        for key in listed_keys(run, info):
            direction = "rose" if key.confidence_change > 0 else "fell"
            drivers = ", ".join(named(m) for m, _, _ in key.drivers[:3])
            next_step = key.next_step if key.next_step is not None else following.get(key.step)
            span = f"{key.step}&rarr;{next_step}" if next_step is not None else f"{key.step}"
            steps_seen.append(f"step {span} (confidence {direction} by {100 * abs(key.confidence_change):.1f} "
                              f"points, driven by {drivers})")
        learned = "At " + "; ".join(steps_seen) + "."
        note = keys_note(run, info)
        if note:
            learned += " " + escape(note)
        _, confidence = mean_confidence(run, c)
        learned += f" Its mean confidence went from {confidence[0]:.2f} to {confidence[-1]:.2f}."
    else:
        learned = "No key checkpoint: no confidence change of this class was carried by its prototypes."
    against_counts: dict[int, list[int]] = {}
    for key in info.key_checkpoints:
        for m, _, opponents in key.drivers:
            for o in opponents:
                against_counts.setdefault(o, [])
                if m not in against_counts[o]:
                    against_counts[o].append(m)
    if against_counts:
        against = "; ".join(f"{q(run.name(o))} (through {', '.join(named(m) for m in ms)})"
                            for o, ms in sorted(against_counts.items(), key=lambda kv: -len(kv[1])))
        against = f"It separated {name} from " + against + "."
    else:
        against = "No class moved the opposite way through the same prototypes at its key checkpoints."
    confuses = confusion_text(run, info)
    return ("<dl class=\"answers\">"
            f"<dt>Which prototypes does the model rely on?</dt><dd>{relies}</dd>"
            f"<dt>When did it learn them?</dt><dd>{learned}</dd>"
            f"<dt>Against which classes?</dt><dd>{against}</dd>"
            f"<dt>Which prototype confuses it?</dt><dd>{confuses}</dd></dl>")


def confusion_text(run: RunData, info: ClassExplanation) -> str:
    c = info.index
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    parts = []
    if run.has("evaluation", "final.npz"):
        row = run.confusion[c].copy()
        total = int(row.sum())
        row[c] = 0
        if row.max() > 0:
            other = int(row.argmax())
            parts.append(f"On the test split it is most often mistaken for {q(run.name(other))} "
                         f"({int(row[other])} of {total} samples).")
        else:
            parts.append(f"On the test split none of its {total} samples is misclassified.")
    most = explanation.most_confused if explanation else None
    if most is not None and c in (most.a, most.b) and (pair is None or {most.a, most.b} != {pair.a, pair.b}):
        other = most.b if c == most.a else most.a
        parts.append(f"It belongs to the most confused pair (with {q(run.name(other))}), which has no uncertain "
                     "prototype to analyse.")
    if pair is not None and c in (pair.a, pair.b):
        other = pair.b if c == pair.a else pair.a
        which = ("the most confused pair" if most is not None and {most.a, most.b} == {pair.a, pair.b}
                 else "the analysed pair")
        if explanation.uncertain_prototype is not None:
            parts.append(f"It belongs to {which} (with {q(run.name(other))}); the uncertain "
                         f"prototype there is {uncertain_text(run)}.")
        else:
            parts.append(f"It belongs to {which} (with {q(run.name(other))}); no uncertain "
                         "prototype was found there.")
        reliable = [m for m in pair.reliable if pair.favours.get(m) == c and m not in explanation.background]
        if reliable:
            parts.append(f"Reliable evidence for it against {q(run.name(other))}: "
                         + ", ".join(psup(run, m, (c, other)) for m in reliable) + ".")
    elif pair is not None:
        parts.append(f"The pair analysis covers {q(run.name(pair.a))} / {q(run.name(pair.b))}; no uncertain "
                     "prototype was analysed for this class.")
    return " ".join(parts) or "Not known: the run has no evaluation yet."


def key_checkpoint_table(run: RunData, info: ClassExplanation) -> str:
    if not info.key_checkpoints:
        return ""
    rows = []
    for key in listed_keys(run, info):
        for m, weight, opponents in key.drivers:
            against = ", ".join(q(run.name(o)) for o in opponents) or "&ndash;"
            rows.append(f"<tr><td class=num>{key.step}</td><td class=num>{100 * key.confidence_change:+.1f}</td>"
                        f"<td>{p(m)}</td><td class=num>{weight:+.4f}</td><td>{against}</td></tr>")
    return ("<details><summary>Every key checkpoint and driving prototype</summary><table>"
            "<tr><th>step</th><th>confidence change (points)</th><th>prototype</th><th>W<sub>t</sub>[m, c]</th>"
            f"<th>separates it from</th></tr>{''.join(rows)}</table></details>")


def key_checkpoint_list(run: RunData, info: ClassExplanation) -> str:
    """Fig. 4's annotations as a numbered list matching the figure's numbers: "step t→t': P-m
    separates c from c' (in x% of c)", up to build.EVENTS_PER_KEY drivers per checkpoint."""
    from i2x.report.build import EVENTS_PER_KEY

    if not info.key_checkpoints:
        return ""
    c, name = info.index, q(run.name(info.index))
    steps = run.intensity[0].tolist()
    following = dict(zip(steps[:-1], steps[1:]))
    items = []
    for key in listed_keys(run, info):
        next_step = key.next_step if key.next_step is not None else following.get(key.step)
        span = f"step {key.step}&rarr;{next_step}" if next_step is not None else f"step {key.step}"
        parts = []
        for m, _, opponents in sorted(key.drivers, key=lambda d: (not d[2], -abs(d[1])))[:EVENTS_PER_KEY]:
            if opponents:
                parts.append(f"{p(m)} separates {name} from " + ", ".join(q(run.name(o)) for o in opponents)
                             + f" ({support(run, c, m)})")
            else:
                parts.append(f"{p(m)} moves {name} alone ({support(run, c, m)})")
        items.append(f"<li>{span}: " + "; ".join(parts) + "</li>")
    return f'<ol class="keys">{"".join(items)}</ol>'


def gallery_table(rows, *, anchors: bool, prefix: str = "", notes: dict[int, str] | None = None,
                  of: str = "images") -> str:
    """Gallery rows as an HTML table: the prototype's name (the row's anchor in the full gallery,
    else a link to it), how many images hold it, and its strip of crops."""
    body = []
    for row in rows:
        name = p(row.prototype, prefix)
        note = (notes or {}).get(row.prototype)
        label = (f"{name}" + (f' <span class="warn">({escape(note)})</span>' if note else "")
                 + f'<br><span class="note">in {row.count} of {row.total} {escape(of)}</span>')
        cell = img_tag(row.png, f"crops of P-{row.prototype}") if row.png else '<span class="note">no position</span>'
        ident = f' id="{prefix}proto-{row.prototype}"' if anchors else ""
        body.append(f"<tr{ident}><th>{label}</th><td>{cell}</td></tr>")
    return f'<table class="gallery">{"".join(body)}</table>'


GALLERY_NOTE = ("Each crop: left, the input around one feature-map position assigned to the prototype (the cell, "
                "outlined, scaled to the input, plus one cell on each side: an approximation of its receptive "
                "field); right, the final checkpoint's saliency of the same region (jet: red high, blue low). "
                "Caption: explanation-set index and class.")


def class_section(run: RunData, info: ClassExplanation, rendered: list[Rendered], gallery=None) -> str:
    anchor = class_slug(info.index)
    figures = [r for r in rendered if "-gallery" not in r.name]
    out = (f'<section id="{anchor}"><h2>Class {q(run.name(info.index))}</h2>'
           f"{class_answers(run, info)}{key_checkpoint_table(run, info)}"
           + "".join(figure(r) for r in figures) + key_checkpoint_list(run, info))
    if gallery:
        shared = set(info.shared)
        out += (f"<h3>Its prototypes in its own samples</h3><p class=\"note\">{GALLERY_NOTE}</p>"
                + gallery_table(gallery, anchors=False, notes={m: "shared" for m in shared},
                                of=f"samples of {run.name(info.index)}"))
    return out + "</section>"


# -- pair and fine-tuning -------------------------------------------------------------------------
def misclassified_html(run: RunData, found) -> str:
    """The analysed pair's misclassified test images: input, assignment map, saliency; the
    uncertain prototype's positions outlined."""
    from i2x.report import gallery as G

    pair = run.explanation.pair
    if found is None:
        return ""
    uncertain = pair.uncertain or ([pair.uncertain_prototype] if pair.uncertain_prototype is not None else [])
    marked = uncertain[:1]
    out = ["<h3>Its misclassified test images</h3>"]
    if not found.directions:
        out.append(f'<p class="note">No test image of the pair is misclassified'
                   + (f" ({escape(found.note)})" if found.note else "") + ".</p>")
        return "".join(out)
    maps = all(d.assignments is not None for d in found.directions)
    if maps:
        out.append('<p class="note">Per image: the input; its assignment map (one colour per prototype, computed '
                   "from the final checkpoint's features with the stored PCA and centroids); the final checkpoint's "
                   "saliency for the predicted class."
                   + (f" Outlined in red-orange: the positions assigned to the uncertain prototype {p(marked[0])}."
                      if marked else "") + "</p>")
    elif found.note:
        out.append(f'<p class="note">Images only: {escape(found.note)}.</p>')
    for d in found.directions:
        if not len(d.images):
            out.append(f"<p>No test image of {q(run.name(d.true))} is predicted as {q(run.name(d.predicted))}.</p>")
            continue
        shown = f"{len(d.images)} of {d.total}" if d.total > len(d.images) else f"{d.total}"
        out.append(f"<p>{shown} test image{'s' if d.total != 1 else ''} of {q(run.name(d.true))} predicted as "
                   f"{q(run.name(d.predicted))}"
                   + (f"; {p(marked[0])} is at {int(np.isin(d.assignments, marked).any(axis=(1, 2)).sum())} of "
                      f"them" if maps and marked else "") + ":</p>")
        captions = [f"test #{i}" + (f" p={float(c):.2f}" if d.confidence is not None else "")
                    for i, c in zip(d.test_indices, d.confidence if d.confidence is not None else d.test_indices)]
        if maps:
            png = G.misclassified_strip(d.images, d.assignments, d.saliency, marked, run.n_prototypes, captions)
        else:
            png = G.plain_strip(d.images, captions)
        out.append(f'<div class="strip">{img_tag(png, f"{run.name(d.true)} predicted as {run.name(d.predicted)}")}'
                   "</div>")
    return "".join(out)


def pair_section(run: RunData, rendered: list[Rendered], gallery=None, found=None) -> str:
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    if pair is None:
        return ""
    a, b = q(run.name(pair.a)), q(run.name(pair.b))
    background = set(explanation.background)
    rows = []
    for row in sorted(pair.rows, key=lambda r: (r.get("category") != "uncertain", r.get("category") != "reliable",
                                                  r["prototype"])):
        favours = row.get("favours")
        category = escape(str(row.get("category")))
        if row.get("category") == "uncertain":
            category = f'<span class="warn">{category}</span>'
        if row["prototype"] in background and row.get("category") != "background":
            category += " (background)"
        rows.append(f"<tr><td>{p(row['prototype'])}</td><td>{category}</td>"
                    f"<td>{q(run.name(favours)) if favours is not None else '&ndash;'}</td>"
                    f"<td class=num>{share(row.get('presence_a', 0))}</td>"
                    f"<td class=num>{share(row.get('presence_b', 0))}</td>"
                    f"<td class=num>{row.get('flips', 0)}</td><td class=num>{row.get('unsupported_flips', 0)}</td></tr>")
    reliable = [m for m in pair.reliable if m not in background]
    text = (f"<p>Analysed pair: {analysed_text(run)}. "
            f"Reliable prototypes (one side throughout): "
            + (", ".join(psup(run, m, (pair.a, pair.b)) for m in reliable) if reliable else "none")
            + ". " + (f"Background, not evidence: {plist(sorted(set(pair.reliable) & background))}. "
                      if set(pair.reliable) & background else "")
            + f"Uncertain (flip sides with nothing else carrying the decision): {plist(pair.uncertain)}. "
            f"Compensated (flip, but another prototype takes over): {plist(pair.compensated)}.</p>"
            f"<p>Uncertain prototype: {uncertain_text(run)}.</p>")
    table = ("<table><tr><th>prototype</th><th>category</th><th>favours</th>"
             f"<th>in samples of {a}</th><th>in samples of {b}</th><th>flips</th><th>unsupported flips</th></tr>"
             + "".join(rows) + "</table>")
    figures = [r for r in rendered if "-gallery" not in r.name]
    out = (f'<section id="pair"><h2>Pair analysis: {a} vs {b}</h2>{text}'
           + "".join(figure(r) for r in figures[:1]) + table + "".join(figure(r) for r in figures[1:]))
    out += misclassified_html(run, found)
    if gallery:
        label = "uncertain" if pair.uncertain else "alternating"
        notes = {m: label for m in (pair.uncertain or [pair.uncertain_prototype])[:3] if m is not None}
        out += (f"<h3>Its prototypes in samples of {a} and {b}</h3><p class=\"note\">{GALLERY_NOTE}</p>"
                + gallery_table(gallery, anchors=False, notes=notes,
                                of=f"samples of {run.name(pair.a)} and {run.name(pair.b)}"))
    return out + "</section>"


def welch(table: dict, metric: str = "sum") -> dict | None:
    """The Welch test of curated->full against full->full on `metric` from the table's `tests`
    (i2x.core.finetune.add_statistics), when it has one; its p is None when it could not be
    computed (too few repeats, or no variation)."""
    for test in table.get("tests") or []:
        if isinstance(test, dict) and test.get("metric") == metric:
            return test
    return None


def finetune_summary(run: RunData, *, with_test: bool = True) -> str:
    """with_test=False: without the Welch sentence (the fine-tuning section prints the tests under its table)."""
    table = run.finetune_table or {}
    rows = {r.get("protocol"): r for r in table.get("rows", [])}
    baseline, curated = rows.get("full->full"), rows.get("curated->full")
    if baseline and curated and baseline.get("sum") and curated.get("sum"):
        b_sum, c_sum = baseline["sum"]["mean"], curated["sum"]["mean"]
        verdict = "fewer" if c_sum < b_sum else "more" if c_sum > b_sum else "as many"
        text = (f"curated&rarr;full leaves {format_mean_std(curated['sum'])} confusions of the pair, {verdict} "
                f"than full&rarr;full ({format_mean_std(baseline['sum'])}); accuracy "
                f"{format_mean_std(curated.get('accuracy'), percent=True)}% vs "
                f"{format_mean_std(baseline.get('accuracy'), percent=True)}%.")
        test = welch(table)
        if test is not None:
            if with_test:  # the sentence the CLI prints (i2x.core.finetune); significant is None when p is
                text += " " + escape(test.get("text") or "")
                if not test.get("significant"):
                    text += " The difference may be noise."
        else:
            text += " No significance test was recorded: treat the difference as unproven."
        return text
    return f"{len(rows)} protocols, see the fine-tuning section."


def cell(value, interval=None, *, percent: bool = False) -> str:
    """mean ± std, and below it the 95% interval of the mean (the row's `ci95` for this metric)."""
    text = format_mean_std(value, percent=percent)
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        low, high = interval
        scale = 100.0 if percent and max(abs(float(low)), abs(float(high))) <= 1.0 else 1.0
        text += f'<br><span class="note">95% CI [{scale * float(low):.2f}, {scale * float(high):.2f}]</span>'
    return text


def finetune_html_table(run: RunData) -> str:
    table = run.finetune_table or {}
    pair = run.explanation.pair if run.explanation else None
    a, b = (q(run.name(pair.a)), q(run.name(pair.b))) if pair else ("a", "b")
    rows = ""
    base = table.get("baseline")
    if base:  # the final model before any fine-tuning: the reference row
        rows += (f"<tr><td>final model (no fine-tuning)</td><td class=num>{format_mean_std(base.get('accuracy'), percent=True)}"
                 f"</td><td class=num>{base.get('a_to_b', '')}</td><td class=num>{base.get('b_to_a', '')}</td>"
                 f"<td class=num>{base.get('sum', '')}</td></tr>")
    rows += "".join(
        f"<tr><td>{escape(str(r.get('protocol')))}</td>"
        + "".join(f"<td class=num>{cell(r.get(m), (r.get('ci95') or {}).get(m), percent=m == 'accuracy')}</td>"
                  for m in ("accuracy", "a_to_b", "b_to_a", "sum")) + "</tr>" for r in table.get("rows", []))
    return (f"<table><tr><th>protocol</th><th>test accuracy (%)</th><th>{a}&rarr;{b}</th><th>{b}&rarr;{a}</th>"
            f"<th>sum</th></tr>{rows}</table>")


def finetune_section(run: RunData) -> str:
    table = run.finetune_table
    if not table or not table.get("rows"):
        return ('<section id="finetune"><h2>Fine-tuning</h2><p class="note">This run has no fine-tuning table '
                "(finetune/table.json); run the fine-tune stage to compare the protocols.</p></section>")
    repeats = table.get("repeats")
    note = f" over {repeats} seeds" if repeats else ""
    return (f'<section id="finetune"><h2>Fine-tuning (Table 1)</h2><p>From the final model, mean &plusmn; std{note}. '
            "full: the whole explanation set; curated: without the samples that contain the uncertain prototype; "
            f"x&rarr;y: one epoch on x then one on y.</p><p>{finetune_summary(run, with_test=False)}</p>"
            + finetune_html_table(run)
            + "".join(f"<p>{escape(t['text'])}</p>" for t in table.get("tests") or [] if t.get("text"))
            + removed_paragraph(run, table) + "</section>")


def removed_paragraph(run: RunData, table: dict) -> str:
    """What the curated set lacks of each class: the fine-tune stage's record, the CLI's sentence."""
    from i2x.core.finetune import removed_text

    removed = table.get("removed_fraction_per_class")
    if not isinstance(removed, list) or len(removed) != len(run.class_names):
        return ""
    return f"<p>{escape(removed_text(removed, [str(c) for c in run.class_names]))}</p>"


def run_report(run: RunData, groups, extra: str = "") -> str:
    """groups: build.Report (figures, gallery rows, misclassified images) or a plain mapping of
    section -> figures."""
    galleries = getattr(groups, "galleries", {})
    found = getattr(groups, "misclassified", None)
    explanation = run.explanation
    nav = ['<li><a href="#overview">Overview</a></li>']
    sections = [trust_section(run), overview(run),
                "".join(figure(r) for r in groups.get("overview", []) if r.name == "confusion.png")]
    if explanation is None:
        sections.append('<p class="warn">This run has no explanation yet (explanation/explanation.json); '
                        "run the explanation stage and build the report again.</p>")
    else:
        for c, info in sorted(explanation.classes.items()):
            nav.append(f'<li><a href="#{class_slug(c)}">Class {q(run.name(c))}</a></li>')
            sections.append(class_section(run, info, groups.get(class_slug(c), []), galleries.get(class_slug(c))))
        if explanation.pair is not None:
            nav.append('<li><a href="#pair">Pair analysis</a></li>')
            sections.append(pair_section(run, groups.get("pair", []), galleries.get("pair"), found))
    nav.append('<li><a href="#finetune">Fine-tuning</a></li>')
    sections.append(finetune_section(run))
    if galleries.get("gallery"):
        nav.append('<li><a href="#gallery">Prototype gallery</a></li>')
        notes = {m: "background" for m in (explanation.background if explanation else [])}
        if explanation is not None and explanation.uncertain_prototype is not None:
            notes[explanation.uncertain_prototype] = "uncertain"
        sections.append(f'<section id="gallery"><h2>Prototype gallery</h2><p class="note">Every prototype over the '
                        f"whole explanation set, up to 6 crops each from different samples (the most salient "
                        f"first). {GALLERY_NOTE}</p>"
                        + gallery_table(galleries["gallery"], anchors=True, notes=notes) + "</section>")
    if extra:
        nav.append('<li><a href="#comparison">Comparison</a></li>')
        sections.append(extra)
    header = (f"<h1>I2X report: why does the model look there?</h1><p class=\"subtitle\">Run "
              f"<code>{escape(run.run_id)}</code> &middot; {len(run.class_names)} classes &middot; test accuracy "
              f"{percent(run.accuracy)}</p>")
    return page(f"I2X report {run.run_id}", header + sections[0] + f"<nav><ul>{''.join(nav)}</ul></nav>"
                + "".join(sections[1:]))


# -- comparison -----------------------------------------------------------------------------------
IGNORED_SETTINGS = {"run_id", "created"}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not prefix and k in IGNORED_SETTINGS:
                continue
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def settings_difference(meta_a: dict, meta_b: dict) -> dict[str, tuple]:
    """run.json settings that differ between two runs, as dotted keys -> (a, b); run_id and
    creation time are not settings."""
    flat_a, flat_b = _flatten(meta_a), _flatten(meta_b)
    return {k: (flat_a.get(k), flat_b.get(k)) for k in sorted(set(flat_a) | set(flat_b))
            if flat_a.get(k) != flat_b.get(k)}


def variation_text(run_a: RunData, run_b: RunData) -> str:
    """What the two runs are: the paper's data-order variation only when the seed alone differs."""
    diff = settings_difference(run_a.meta, run_b.meta)
    if set(diff) == {"train.seed"}:
        seed_a, seed_b = diff["train.seed"]
        return (f"the same training with another data order (paper 3.4): run.json differs only in the training "
                f"seed, {escape(str(seed_a))} vs {escape(str(seed_b))}")
    if not diff:
        return "two runs with identical settings (same seed): any difference comes from nondeterminism"
    shown = list(diff.items())[:8]
    text = "not a data-order variation: their settings differ in " + "; ".join(
        f"<code>{escape(k)}</code> ({escape(str(a))} vs {escape(str(b))})" for k, (a, b) in shown)
    if len(diff) > len(shown):
        text += f" and {len(diff) - len(shown)} more"
    return text


def comparison_body(run_a: RunData, run_b: RunData, confusion_png: bytes | None,
                    pair_figs: tuple[list[Rendered], list[Rendered]], galleries=(None, None)) -> str:
    label_a, label_b = escape(run_a.run_id), escape(run_b.run_id)
    prefixes = ("cmp-a-", "cmp-b-")

    def summary(run: RunData, prefix: str) -> str:
        explanation = run.explanation
        pair = explanation.pair if explanation else None
        items = [f"<li>Test accuracy: {percent(run.accuracy)}</li>"]
        if explanation is not None and explanation.warnings:
            items.append(f'<li class="warn">{len(explanation.warnings)} warning(s): '
                         + "; ".join(escape(w["code"]) for w in explanation.warnings) + "</li>")
        most = most_confused_text(run) if explanation else None
        if most:
            items.append(f"<li>Most confused pair: {most}</li>")
        if pair is not None:
            items.append(f"<li>Analysed pair: {analysed_text(run)}</li>")
            items.append(f"<li>Reliable: {plist(pair.reliable, prefix)}; uncertain: {plist(pair.uncertain, prefix)}</li>")
        seed = (run.meta.get("train") or {}).get("seed")
        if seed is not None:
            items.append(f"<li>Training seed: {escape(str(seed))}</li>")
        return "<ul>" + "".join(items) + "</ul>"

    def class_cell(run: RunData, c: int, prefix: str) -> str:
        explanation = run.explanation
        info = explanation.classes.get(c) if explanation else None
        if info is None:
            return "&ndash;"
        first = info.key_checkpoints[0] if info.key_checkpoints else None
        start = (f"first key step {first.step}: " + ", ".join(p(m, prefix) for m, _, _ in first.drivers[:3])) if first \
            else "no key checkpoint"
        opponents = ", ".join(q(run.name(o)) for o in info.opponents) or "none"
        return (f"shared {plist(info.shared, prefix)}<br>{start}<br>{len(info.key_checkpoints)} key checkpoints; "
                f"separated from {opponents}")

    classes = run_a.class_names
    rows = "".join(f"<tr><th>{q(name)}</th><td>{class_cell(run_a, c, prefixes[0])}</td>"
                   f"<td>{class_cell(run_b, c, prefixes[1])}</td></tr>" for c, name in enumerate(classes))
    body = (f'<section id="comparison"><h2>Comparison: <code>{label_a}</code> vs <code>{label_b}</code></h2>'
            f'<p id="variation">These are {variation_text(run_a, run_b)}.</p>'
            "<p class=\"note\">Each run clusters its own prototypes, so P-m of one run is not P-m of the other: "
            "compare strategies (which classes are separated when, which pair is confused, whether an "
            "uncertain prototype appears), not prototype numbers; the galleries below show what each P-m looks like."
            f"</p><div class=\"side\"><div><h3>{label_a}</h3>{summary(run_a, prefixes[0])}</div>"
            f"<div><h3>{label_b}</h3>{summary(run_b, prefixes[1])}</div></div>")
    if confusion_png:
        body += figure(Rendered("compare-confusion.png", confusion_png,
                                f"Fig. 8: confusion matrices of {run_a.run_id} (left) and {run_b.run_id} (right) "
                                "on the test split."))
    if any(pair_figs):
        body += "<h3>Pair analysis</h3><div class=\"side\">" + "".join(
            "<div>" + "".join(figure(r) for r in figs[:1]) + "</div>" for figs in pair_figs) + "</div>"
    body += (f"<h3>Structured explanations per class</h3><table><tr><th>class</th><th>{label_a}</th>"
             f"<th>{label_b}</th></tr>{rows}</table>")
    for run, rows_, prefix in zip((run_a, run_b), galleries, prefixes):
        if rows_:
            body += (f"<h3>Prototype gallery of <code>{escape(run.run_id)}</code></h3><p class=\"note\">{GALLERY_NOTE}</p>"
                     + gallery_table(rows_, anchors=True, prefix=prefix))
    return body + "</section>"


def comparison_page(run_a: RunData, run_b: RunData, body: str) -> str:
    header = (f"<h1>I2X comparison</h1><p class=\"subtitle\">Runs <code>{escape(run_a.run_id)}</code> and "
              f"<code>{escape(run_b.run_id)}</code></p>")
    return page(f"I2X comparison {run_a.run_id} vs {run_b.run_id}", header + body)
