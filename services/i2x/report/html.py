"""The self-contained HTML report: inline CSS, images as data: URIs, no script, font or link
to anything outside the file. Every sentence is generated from the run's explanation."""

from __future__ import annotations

import base64
from html import escape

from i2x.report.build import Rendered, class_slug, mean_confidence
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
.warn{color:#b24a00;font-weight:600}.proto{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:600;white-space:nowrap}
nav ul{columns:3;padding-left:1.2em}
.side{display:grid;grid-template-columns:1fr 1fr;gap:18px}.side>div{min-width:0}
.note{color:#5a6474;font-size:0.92em}
"""


def p(m: int) -> str:
    return f'<span class="proto">P-{int(m)}</span>'


def plist(prototypes) -> str:
    prototypes = list(prototypes)
    return ", ".join(p(m) for m in prototypes) if prototypes else "none"


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
    per_class = ", ".join(f"{int(n)} of {q(run.name(c))}" for c, n in enumerate(removed) if n)
    where = "from every class" if scope == "all" else "from the pair's two classes only"
    text = (f"Removed the samples whose assignment map contains {p(curation['prototype'])} {where}: "
            f"{summary.get('size_before', '?')} &rarr; {summary.get('size_after', '?')} samples "
            f"({summary.get('removed', '?')} removed{': ' + per_class if per_class else ''}).")
    return text


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
    if explanation is not None:
        rows.append(("Prototypes", f"{explanation.raw.get('n_prototypes', run.n_prototypes)} abstract prototypes "
                                   f"over {explanation.raw.get('n_samples', '?')} explanation samples"))
        pair = explanation.pair
        if pair is not None:
            counts = ""
            if pair.a_to_b is not None:
                counts = (f": {pair.a_to_b} {q(run.name(pair.a))} predicted as {q(run.name(pair.b))}, "
                          f"{pair.b_to_a} the other way")
            rows.append(("Most confused pair", f"{q(run.name(pair.a))} / {q(run.name(pair.b))}{counts}"))
            rows.append(("Uncertain prototype", uncertain_text(run)))
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
    if pair.uncertain_source == "compensated":
        return (f"{p(m)}: it alternates between {names}, but every flip is carried by another prototype; "
                "no prototype flips unsupported, so this is the most alternating one (a weaker finding)")
    return f"{p(m)}: its contribution flips between {names} with no other prototype supporting the decision"


# -- per class ----------------------------------------------------------------------------------
def class_answers(run: RunData, info: ClassExplanation) -> str:
    """The four questions of the issue, answered in words from the explanation."""
    c, name = info.index, q(run.name(info.index))
    relies = (f"{plist(info.shared)}: present in every one of its {info.n_samples} samples"
              if info.shared else f"no prototype appears in all {info.n_samples} samples")
    groups = [g for g in info.specialized if g["prototypes"]]
    if groups:
        relies += "; besides, " + "; ".join(f"a group of {g['size']} samples also shows {plist(g['prototypes'])}"
                                              for g in groups)
    relies += "."
    if info.key_checkpoints:
        steps_seen = []
        checkpoint_steps = run.intensity[0].tolist()
        following = dict(zip(checkpoint_steps[:-1], checkpoint_steps[1:]))
        for key in info.key_checkpoints:
            direction = "rose" if key.confidence_change > 0 else "fell"
            drivers = ", ".join(p(m) for m, _, _ in key.drivers[:3])
            next_step = key.next_step if key.next_step is not None else following.get(key.step)
            span = f"{key.step}&rarr;{next_step}" if next_step is not None else f"{key.step}"
            steps_seen.append(f"step {span} (confidence {direction} by {100 * abs(key.confidence_change):.1f} "
                              f"points, driven by {drivers})")
        learned = "At " + "; ".join(steps_seen) + "."
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
        against = "; ".join(f"{q(run.name(o))} (through {plist(ms)})"
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
    if pair is not None and c in (pair.a, pair.b):
        other = pair.b if c == pair.a else pair.a
        if explanation.uncertain_prototype is not None:
            parts.append(f"It belongs to the most confused pair (with {q(run.name(other))}); the uncertain "
                         f"prototype there is {uncertain_text(run)}.")
        else:
            parts.append(f"It belongs to the most confused pair (with {q(run.name(other))}); no uncertain "
                         "prototype was found there.")
        reliable = [m for m in pair.reliable if pair.favours.get(m) == c]
        if reliable:
            parts.append(f"Reliable evidence for it against {q(run.name(other))}: {plist(reliable)}.")
    elif pair is not None:
        parts.append(f"The pair analysis covers the most confused pair ({q(run.name(pair.a))} / "
                     f"{q(run.name(pair.b))}); no uncertain prototype was analysed for this class.")
    return " ".join(parts) or "Not known: the run has no evaluation yet."


def key_checkpoint_table(run: RunData, info: ClassExplanation) -> str:
    if not info.key_checkpoints:
        return ""
    rows = []
    for key in info.key_checkpoints:
        for m, weight, opponents in key.drivers:
            against = ", ".join(q(run.name(o)) for o in opponents) or "&ndash;"
            rows.append(f"<tr><td class=num>{key.step}</td><td class=num>{100 * key.confidence_change:+.1f}</td>"
                        f"<td>{p(m)}</td><td class=num>{weight:+.4f}</td><td>{against}</td></tr>")
    return ("<details><summary>Every key checkpoint and driving prototype</summary><table>"
            "<tr><th>step</th><th>confidence change (points)</th><th>prototype</th><th>W<sub>t</sub>[m, c]</th>"
            f"<th>separates it from</th></tr>{''.join(rows)}</table></details>")


def class_section(run: RunData, info: ClassExplanation, rendered: list[Rendered]) -> str:
    anchor = class_slug(info.index)
    return (f'<section id="{anchor}"><h2>Class {q(run.name(info.index))}</h2>'
            f"{class_answers(run, info)}{key_checkpoint_table(run, info)}"
            + "".join(figure(r) for r in rendered) + "</section>")


# -- pair and fine-tuning -------------------------------------------------------------------------
def pair_section(run: RunData, rendered: list[Rendered]) -> str:
    explanation = run.explanation
    pair = explanation.pair if explanation else None
    if pair is None:
        return ""
    a, b = q(run.name(pair.a)), q(run.name(pair.b))
    rows = []
    for row in sorted(pair.rows, key=lambda r: (r.get("category") != "uncertain", r.get("category") != "reliable",
                                                  r["prototype"])):
        favours = row.get("favours")
        category = escape(str(row.get("category")))
        if row.get("category") == "uncertain":
            category = f'<span class="warn">{category}</span>'
        rows.append(f"<tr><td>{p(row['prototype'])}</td><td>{category}</td>"
                    f"<td>{q(run.name(favours)) if favours is not None else '&ndash;'}</td>"
                    f"<td class=num>{100 * row.get('presence_a', 0):.0f}%</td>"
                    f"<td class=num>{100 * row.get('presence_b', 0):.0f}%</td>"
                    f"<td class=num>{row.get('flips', 0)}</td><td class=num>{row.get('unsupported_flips', 0)}</td></tr>")
    text = (f"<p>The model confuses {a} and {b} most on the test split"
            + (f" ({pair.a_to_b} {a}&rarr;{b}, {pair.b_to_a} {b}&rarr;{a})" if pair.a_to_b is not None else "")
            + f". Reliable prototypes (one side throughout): {plist(pair.reliable)}. "
            f"Uncertain (flip sides with nothing else carrying the decision): {plist(pair.uncertain)}. "
            f"Compensated (flip, but another prototype takes over): {plist(pair.compensated)}.</p>"
            f"<p>Uncertain prototype: {uncertain_text(run)}.</p>")
    table = ("<table><tr><th>prototype</th><th>category</th><th>favours</th>"
             f"<th>in samples of {a}</th><th>in samples of {b}</th><th>flips</th><th>unsupported flips</th></tr>"
             + "".join(rows) + "</table>")
    return (f'<section id="pair"><h2>Pair analysis: {a} vs {b}</h2>{text}'
            + "".join(figure(r) for r in rendered[:1]) + table + "".join(figure(r) for r in rendered[1:])
            + "</section>")


def finetune_summary(run: RunData) -> str:
    table = run.finetune_table or {}
    rows = {r.get("protocol"): r for r in table.get("rows", [])}
    baseline, curated = rows.get("full->full"), rows.get("curated->full")
    if baseline and curated and baseline.get("sum") and curated.get("sum"):
        b_sum, c_sum = baseline["sum"]["mean"], curated["sum"]["mean"]
        verdict = "fewer" if c_sum < b_sum else "more" if c_sum > b_sum else "as many"
        return (f"curated&rarr;full leaves {format_mean_std(curated['sum'])} confusions of the pair, {verdict} "
                f"than full&rarr;full ({format_mean_std(baseline['sum'])}); accuracy "
                f"{format_mean_std(curated.get('accuracy'), percent=True)}% vs "
                f"{format_mean_std(baseline.get('accuracy'), percent=True)}%.")
    return f"{len(rows)} protocols, see the fine-tuning section."


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
        f"<tr><td>{escape(str(r.get('protocol')))}</td><td class=num>{format_mean_std(r.get('accuracy'), percent=True)}</td>"
        f"<td class=num>{format_mean_std(r.get('a_to_b'))}</td><td class=num>{format_mean_std(r.get('b_to_a'))}</td>"
        f"<td class=num>{format_mean_std(r.get('sum'))}</td></tr>" for r in table.get("rows", []))
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
            f"x&rarr;y: one epoch on x then one on y.</p><p>{finetune_summary(run)}</p>{finetune_html_table(run)}"
            "</section>")


def run_report(run: RunData, groups: dict[str, list[Rendered]], extra: str = "") -> str:
    explanation = run.explanation
    nav = ['<li><a href="#overview">Overview</a></li>']
    sections = [overview(run), "".join(figure(r) for r in groups.get("overview", []) if r.name == "confusion.png")]
    if explanation is None:
        sections.append('<p class="warn">This run has no explanation yet (explanation/explanation.json); '
                        "run the explanation stage and build the report again.</p>")
    else:
        for c, info in sorted(explanation.classes.items()):
            nav.append(f'<li><a href="#{class_slug(c)}">Class {q(run.name(c))}</a></li>')
            sections.append(class_section(run, info, groups.get(class_slug(c), [])))
        if explanation.pair is not None:
            nav.append('<li><a href="#pair">Pair analysis</a></li>')
            sections.append(pair_section(run, groups.get("pair", [])))
    nav.append('<li><a href="#finetune">Fine-tuning</a></li>')
    sections.append(finetune_section(run))
    if groups.get("gallery"):
        nav.append('<li><a href="#gallery">Prototype gallery</a></li>')
        sections.append('<section id="gallery"><h2>Prototype gallery</h2><p class="note">Each crop is the input '
                        "region around one feature-map position assigned to the prototype (the cell, outlined in "
                        "white, scaled to the input, plus one cell on each side: an approximation of its receptive "
                        "field), with the final checkpoint's saliency overlaid (red: high).</p>"
                        + "".join(figure(r) for r in groups["gallery"]) + "</section>")
    if extra:
        nav.append('<li><a href="#comparison">Comparison</a></li>')
        sections.append(extra)
    header = (f"<h1>I2X report: why does the model look there?</h1><p class=\"subtitle\">Run "
              f"<code>{escape(run.run_id)}</code> &middot; {len(run.class_names)} classes &middot; test accuracy "
              f"{percent(run.accuracy)}</p>")
    return page(f"I2X report {run.run_id}", header + f"<nav><ul>{''.join(nav)}</ul></nav>" + "".join(sections))


# -- comparison -----------------------------------------------------------------------------------
def comparison_body(run_a: RunData, run_b: RunData, confusion_png: bytes | None,
                    pair_figs: tuple[list[Rendered], list[Rendered]]) -> str:
    label_a, label_b = escape(run_a.run_id), escape(run_b.run_id)

    def summary(run: RunData) -> str:
        explanation = run.explanation
        pair = explanation.pair if explanation else None
        items = [f"<li>Test accuracy: {percent(run.accuracy)}</li>"]
        if pair is not None:
            items.append(f"<li>Most confused pair: {q(run.name(pair.a))} / {q(run.name(pair.b))}"
                         + (f" ({pair.a_to_b} + {pair.b_to_a})" if pair.a_to_b is not None else "") + "</li>")
            items.append(f"<li>Reliable: {plist(pair.reliable)}; uncertain: {plist(pair.uncertain)}</li>")
            items.append(f"<li>Uncertain prototype: {uncertain_text(run)}</li>")
        seed = (run.meta.get("train") or {}).get("seed")
        if seed is not None:
            items.append(f"<li>Training seed: {escape(str(seed))}</li>")
        return "<ul>" + "".join(items) + "</ul>"

    def class_cell(run: RunData, c: int) -> str:
        explanation = run.explanation
        info = explanation.classes.get(c) if explanation else None
        if info is None:
            return "&ndash;"
        first = info.key_checkpoints[0] if info.key_checkpoints else None
        start = (f"first key step {first.step}: " + ", ".join(p(m) for m, _, _ in first.drivers[:3])) if first \
            else "no key checkpoint"
        opponents = ", ".join(q(run.name(o)) for o in info.opponents) or "none"
        return (f"shared {plist(info.shared)}<br>{start}<br>{len(info.key_checkpoints)} key checkpoints; "
                f"separated from {opponents}")

    classes = run_a.class_names
    rows = "".join(f"<tr><th>{q(name)}</th><td>{class_cell(run_a, c)}</td><td>{class_cell(run_b, c)}</td></tr>"
                   for c, name in enumerate(classes))
    body = (f'<section id="comparison"><h2>Comparison: <code>{label_a}</code> vs <code>{label_b}</code></h2>'
            "<p class=\"note\">Each run clusters its own prototypes, so P-m of one run is not P-m of the other: "
            "compare strategies (which classes are separated when, which pair is confused, whether an "
            "uncertain prototype appears), not prototype numbers; the galleries show what each P-m looks like."
            f"</p><div class=\"side\"><div><h3>{label_a}</h3>{summary(run_a)}</div>"
            f"<div><h3>{label_b}</h3>{summary(run_b)}</div></div>")
    if confusion_png:
        body += figure(Rendered("compare-confusion.png", confusion_png,
                                f"Fig. 8: confusion matrices of {run_a.run_id} (left) and {run_b.run_id} (right) "
                                "on the test split."))
    if any(pair_figs):
        body += "<h3>Pair analysis</h3><div class=\"side\">" + "".join(
            "<div>" + "".join(figure(r) for r in figs[:1]) + "</div>" for figs in pair_figs) + "</div>"
    body += (f"<h3>Structured explanations per class</h3><table><tr><th>class</th><th>{label_a}</th>"
             f"<th>{label_b}</th></tr>{rows}</table></section>")
    return body


def comparison_page(run_a: RunData, run_b: RunData, body: str) -> str:
    header = (f"<h1>I2X comparison</h1><p class=\"subtitle\">Runs <code>{escape(run_a.run_id)}</code> and "
              f"<code>{escape(run_b.run_id)}</code> (paper 3.4: the same training with another data order)</p>")
    return page(f"I2X comparison {run_a.run_id} vs {run_b.run_id}", header + body)
