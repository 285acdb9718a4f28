"""README's sample output is the demo's: every line of it is what `i2x demo` prints today. Two
instant checks (the block's shape, the headline's wording from i2x.core.narrative) and one that
runs the demo itself (about 75 s on 2 cores) and compares every line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
def test_the_readme_sample_is_what_make_demo_prints(tmp_path):
    """Runs `i2x demo` as a user does (its own process, the default threads, the services and a
    local Ray) and compares its summary with README's sample line by line: first the wording with
    the numbers masked (a changed sentence), then the numbers (a changed result). The demo is
    deterministic for a given torch build and thread count: two runs on this machine, and runs on
    different sessions' machines, printed the same figures."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "I2X_TORCH_THREADS")}
    env["I2X_STORE"] = str(tmp_path / "i2x-data")
    done = subprocess.run([str(Path(sys.executable).with_name("i2x")), "demo", "--progress", "none"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.replace(Path(env["I2X_STORE"]).resolve().as_uri(), "file:///.../i2x-data")
    printed = printed[printed.index("Results folder:"):]
    printed = printed[:printed.index("\n", printed.index("Report:"))]  # "Done in N s" is the time, not a result
    sample = readme_sample().rstrip("\n")
    number = re.compile(r"[-+]?\d+(?:\.\d+)?")
    template = [number.sub("#", line) for line in printed.splitlines()]
    assert [number.sub("#", line) for line in sample.splitlines()] == template, REFRESH.format("\n" + printed)
    assert sample.splitlines() == printed.splitlines(), REFRESH.format("\n" + printed)
