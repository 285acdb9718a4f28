"""README's sample output is the demo's: the pair, its confusions, the accuracy and the number of
checkpoints it shows are what `i2x demo` prints today. The test trains the demo's model with the
demo's own constants (i2x.demo.MODEL, DATASET, TRAIN) and reads the pair the way the explanation
does (the most confused pair on the test split of the final checkpoint)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- demo-sample"
REFRESH = ("README.md's sample output (the block after '<!-- demo-sample') is stale: run `make demo` "
           "(or `i2x demo`) and paste its summary there. The demo now prints: {}")


def readme_sample() -> str:
    text = README.read_text()
    start = text.index(MARK)
    block = re.search(r"```\n(.*?)```", text[start:], re.S)
    return block.group(1)


def test_the_readme_sample_is_a_block_with_the_demo_summary():
    sample = readme_sample()
    for needle in ("Results folder:", "final test accuracy", "Most confused pair on the test split:", "| protocol |",
                   "Report:"):
        assert needle in sample, needle


HEADLINE = re.compile(r"Most confused pair on the test split: '(\S+)' / '(\S+)', (\d+) test confusions "
                      r"\((\d+) '\S+' predicted as '\S+', (\d+) '\S+' as '\S+'\)(; tied on count with another pair, "
                      r"ranked first by the (.+?))?\.$")


def test_the_readme_headline_is_what_the_demo_prints_for_its_numbers():
    """The demo prints i2x.core.narrative's headline: fed the README's numbers, it must give the
    README's line exactly, so a change of wording (or of the README) fails here at once."""
    from i2x.core.narrative import headline

    sample = readme_sample()
    line = next((line.strip() for line in sample.splitlines() if "Most confused pair" in line), "")
    found = HEADLINE.match(line)
    assert found, REFRESH.format("(the sample's pair line no longer parses)")
    a, b, count, a_to_b, b_to_a, _, tie = found.groups()
    pair = {"names": [a, b], "count": int(count), "a_to_b": int(a_to_b), "b_to_a": int(b_to_a),
            "source": "confusion", "tie_break": tie}
    assert headline({"most_confused_pair": pair}) == line, REFRESH.format(headline({"most_confused_pair": pair}))
    assert re.search(r"^  final test accuracy [\d.]+% over \d+ checkpoints$", sample, re.M), REFRESH.format("")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("I2X_CHECK_README_DEMO") != "1",
                    reason="set I2X_CHECK_README_DEMO=1: trains the demo model (minutes); the demo's training is "
                           "not bit-reproducible across runs, so its pair can differ from run to run")
def test_the_readme_sample_shows_what_the_demo_prints(tmp_path):
    from i2x import demo
    from i2x.core.explain import most_confused_pair
    from i2x.engine import stages
    from i2x.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    stages.create_run(store, "demo", model=demo.MODEL, dataset=demo.DATASET, train=demo.TRAIN)
    stages.train_run(store, "demo")
    run = stages.get_run(store, "demo")
    index = store.get_json(stages.run_key("demo", "checkpoints", "index.json"))
    a, b, total = most_confused_pair(store.get_npz(stages.run_key("demo", "evaluation", "final.npz"))["confusion"])
    names = f"{run['classes'][a]} / {run['classes'][b]}"
    accuracy = f"final test accuracy {index['accuracy'] * 100:.2f}% over {len(run['checkpoints'])} checkpoints"
    now = f"{accuracy}; most confused pair {names} ({total} test confusions)"
    sample = readme_sample()
    pair_line = next((line for line in sample.splitlines() if "most confused pair" in line.lower()), "")
    # the two class names and the confusion count, whatever the wording around them
    for word in (run["classes"][a], run["classes"][b], str(total)):
        assert re.search(rf"(?<![\w.]){re.escape(word)}(?![\w.])", pair_line), REFRESH.format(now)
    assert accuracy in sample, REFRESH.format(now)
