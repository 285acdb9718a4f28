"""Load the report in real headless Chromium: it renders, every image decodes, no script error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest

from i2x.report import build_report
from i2x.storage import LocalStore

from .synthetic import write_synthetic_run

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Added to the test's copy of the page only (the report itself has no script): after load, record
# each image's decoded width and any script error into the DOM, which --dump-dom prints.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e.type)); }, true);
window.addEventListener('load', function () {
  var widths = Array.prototype.map.call(document.images, function (img) { return img.naturalWidth; });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images: widths, errors: window.__errors,
                                    height: document.body.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user_data}", *args], capture_output=True,
                          text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/setup/system-deps.sh installs it "
                                             "with `make test`; or apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path, output_dir):
    store = LocalStore(tmp_path / "store")
    write_synthetic_run(store, "browser-run")
    html = build_report(store, "browser-run")
    report = store.root / "runs" / "browser-run" / "report.html"

    screenshot = output_dir / "report.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,2000", report.as_uri(),
                    user_data=tmp_path / "profile-1")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.exists() and screenshot.stat().st_size > 20_000

    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    dump = chromium("--dump-dom", "--virtual-time-budget=10000", probed.as_uri(), user_data=tmp_path / "profile-2")
    assert dump.returncode == 0, dump.stderr[-2000:]
    marker = '<pre id="probe">'
    assert marker in dump.stdout, "the page's load event never fired: " + dump.stderr[-2000:]
    result = json.loads(unescape(dump.stdout.split(marker, 1)[1].split("</pre>", 1)[0]))
    assert result["errors"] == []
    assert len(result["images"]) == html.count("<img ") and len(result["images"]) >= 12
    assert all(width > 0 for width in result["images"]), result["images"]
    assert result["height"] > 3000  # every section laid out, not a blank page
    (output_dir / "chromium-probe.json").write_text(json.dumps(result, indent=1))
