"""README's sample output is the demo's: the pair, its confusions, the accuracy and the number of
checkpoints it shows are what `i2x demo` prints today. The test trains the demo's model with the
demo's own constants (i2x.demo.MODEL, DATASET, TRAIN) and reads the pair the way the explanation
does (the most confused pair on the test split of the final checkpoint)."""

from __future__ import annotations

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
    for needle in ("Results folder:", "final test accuracy", "most confused pair:", "| protocol |", "Report:"):
        assert needle in sample, needle


@pytest.mark.slow
@pytest.mark.timeout(900)
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
