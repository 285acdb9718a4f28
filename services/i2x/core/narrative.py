"""The sentences a person reads about an explanation: pure functions of explanation.json (and,
optionally, the fine-tuning table), shared by the CLI, the demo and the report.

Order and honesty rules (docs/EXPLANATION.md): warnings come first; the headline is always the
true most confused test pair; the analysed pair is named apart, with the reason it differs; the
uncertain prototype is given with its support in both classes; a model near chance gets no
confident sentence (no uncertain prototype, no curation claim).
"""

from __future__ import annotations

_REASONS = {
    "most-confused": "the most confused pair",
    "next-confused": "the most confused pair that has an uncertain prototype",
    "given": "the pair you asked for",
}


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.0f}%"


def _pair(names) -> str:
    return f"'{names[0]}' / '{names[1]}'"


def _codes(explanation: dict) -> set[str]:
    return {w["code"] for w in explanation.get("warnings") or []}


def near_chance(explanation: dict) -> bool:
    """True when the explanation carries NEAR_CHANCE_ACCURACY: say nothing confident."""
    return "NEAR_CHANCE_ACCURACY" in _codes(explanation)


def warning_lines(explanation: dict) -> list[str]:
    """One line per warning, in the explanation's order: "warning CODE: message"."""
    return [f"warning {w['code']}: {w['message']}" for w in explanation.get("warnings") or []]


def headline(explanation: dict) -> str:
    """The true most confused test pair, with its counts and, on a tie, the rule that decided."""
    pair = explanation["most_confused_pair"]
    names = pair["names"]
    if pair.get("source") == "given":
        return f"No pair is confused on the test split; {_pair(names)} was analysed because you asked for it."
    text = (f"Most confused pair on the test split: {_pair(names)}, {pair['count']} test confusions "
            f"({pair['a_to_b']} '{names[0]}' predicted as '{names[1]}', {pair['b_to_a']} '{names[1]}' as "
            f"'{names[0]}')")
    if pair.get("tie_break"):
        text += f"; tied on count with another pair, ranked first by the {pair['tie_break']}"
    return text + "."


def analysed_line(explanation: dict) -> str | None:
    """Which pair the analysis and curation use, when it is not the most confused one; else None."""
    analysed = explanation.get("analysed_pair")
    most = explanation["most_confused_pair"]
    if not analysed or (analysed["a"], analysed["b"]) == (most["a"], most["b"]):
        return None
    text = (f"Analysed pair: {_pair(analysed['names'])} ({analysed['count']} test confusions), "
            f"{_REASONS.get(analysed['reason'], analysed['reason'])}")
    classes = explanation.get("classes") or []
    skipped = analysed.get("skipped") or []
    if skipped and classes:
        passed = "; ".join(f"'{classes[s['a']]}' / '{classes[s['b']]}' ({s['count']}): {s['why']}" for s in skipped)
        text += f". Passed over: {passed}"
    return text + "."


def _support(explanation: dict, m: int) -> str:
    a, b = explanation["pair_analysis"]["a"], explanation["pair_analysis"]["b"]
    names = explanation["pair_analysis"]["names"]
    row = next((r for r in explanation["pair_analysis"]["prototypes"] if r["prototype"] == m), None)
    if row is not None:
        pa, pb = row["presence_a"], row["presence_b"]
    else:  # not among the pair's relevant prototypes: read the per-class presence
        pa, pb = explanation["per_class"][a]["presence"][m], explanation["per_class"][b]["presence"][m]
    return f"in {_pct(pa)} of '{names[0]}' and {_pct(pb)} of '{names[1]}'"


def uncertain_line(explanation: dict) -> str:
    """The analysed pair's uncertain prototype with its support, or why there is none."""
    analysis = explanation["pair_analysis"]
    names = analysis["names"]
    m = explanation.get("uncertain_prototype")
    if analysis.get("withheld") == "NEAR_CHANCE_ACCURACY" or (m is None and near_chance(explanation)):
        return "No uncertain prototype is named: the model is near chance, so no prototype can be trusted to explain it."
    if m is None:
        return (f"No uncertain prototype for {_pair(names)}: no prototype present in both classes changes sides "
                "between them, so there is nothing to curate.")
    if explanation.get("uncertain_prototype_source") == "compensated":
        return (f"Uncertain prototype: P-{m} ({_support(explanation, m)}). It changes sides between {_pair(names)}, "
                "but another prototype takes over at every change (compensated); it is the best guess, not a "
                "clear cause.")
    return (f"Uncertain prototype: P-{m} ({_support(explanation, m)}). It changes sides between {_pair(names)} "
            "with no other prototype taking over, so the model is unsure what it means.")


def curation_line(explanation: dict) -> str | None:
    """What the default curation removes, per class, and whether the cap limited it."""
    curation = explanation.get("curation")
    if not curation:
        return None
    summary = curation["scopes"][curation["scope"]]
    classes = explanation["classes"]
    hit = [f"{_pct(f)} of '{classes[c]}'" for c, f in enumerate(summary["removed_fraction_per_class"]) if f > 0]
    m, scope = curation["prototype"], curation["scope"]
    if summary.get("limited"):
        text = (f"Curation (scope '{scope}') removes {summary['removed']} of the {summary['size_before']} explanation "
                f"samples, those where P-{m} covers the most positions, at most {_pct(summary['cap'])} of any class "
                "(see CURATION_LIMITED)")
    else:
        text = (f"Curation (scope '{scope}') removes the {summary['removed']} of {summary['size_before']} explanation "
                f"samples that hold P-{m}")
    return text + (f": {', '.join(hit)}." if hit else ".")


def table_lines(table: dict | None) -> list[str]:
    """The significance of Table 1 (add_statistics' tests), one line each; [] without a table."""
    if not table:
        return []
    return [test["text"] for test in table.get("tests") or []]


def summary_lines(explanation: dict, table: dict | None = None) -> list[str]:
    """Everything above in reading order: warnings, headline, analysed pair, uncertain prototype,
    curation, Table 1's significance."""
    lines = warning_lines(explanation) + [headline(explanation)]
    analysed = analysed_line(explanation)
    if analysed:
        lines.append(analysed)
    lines.append(uncertain_line(explanation))
    if not near_chance(explanation):
        curation = curation_line(explanation)
        if curation:
            lines.append(curation)
    lines += table_lines(table)
    return lines
