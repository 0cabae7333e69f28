"""Headless Chromium for the tests of the HTML pages (report, cross-model, by-step, training, overview).

Not a test file: helpers that tests import. ``make browser`` installs chromium (Debian package);
without it the tests that need it are skipped with that message.
"""
from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found on PATH: run `make browser` (Debian package chromium)")

_PROBE = """<script>
window.__lgErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__lgErrors.push(t && t !== window && (t.src || t.href) ? 'failed to load ' + (t.src || t.href) : String(e.message));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute('src'), width: i.naturalWidth, complete: i.complete};
  });
  function box(sel) {
    var el = document.querySelector(sel);
    if (!el) return null;
    var r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY, left: r.left, right: r.right, height: r.height};
  }
  var pre = document.createElement('pre');
  pre.id = 'layergrad-probe';
  pre.textContent = JSON.stringify({errors: window.__lgErrors, images: imgs, viewport: [window.innerWidth, window.innerHeight],
    boxes: {verdicts: box('#verdicts'), headline: box('#headline-figure'), headline_img: box('#headline-figure img'),
            header: box('header.lg-header'), question: box('#question')},
    text: document.body.innerText});
  document.body.appendChild(pre);
});
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def browser_check(page: Path, profile: Path, window: tuple[int, int] = (1400, 900)) -> dict:
    """Load ``page`` in headless chromium at ``window`` (CSS px): console messages, error events, every image's
    natural width, the page boxes of the first screen's parts (``boxes``: top/bottom in page px) and the visible text.

    A copy of the page with a probe script (error listener + checks on load) is placed beside it, so relative
    image paths resolve exactly as for the page itself; the probe's findings are read back from the DOM
    (``--dump-dom``). Console messages come from chromium's log on stderr.
    """
    probe = page.with_name("_browser_probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    try:
        res = chromium([f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", "--dump-dom", "--virtual-time-budget=10000",
                        probe.as_uri()], profile)
    finally:
        probe.unlink()
    m = re.search(r'<pre id="layergrad-probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"probe did not run; chromium rc={res.returncode}, stderr tail: {res.stderr[-800:]}"
    found = json.loads(htmllib.unescape(m.group(1)))
    found["console"] = [line for line in res.stderr.splitlines() if ":CONSOLE" in line and "_browser_probe" in line]
    return found


def screenshot(page: Path, shot: Path, profile: Path, window: tuple[int, int] = (1400, 900)) -> subprocess.CompletedProcess:
    """``page`` as a PNG of its first ``window`` (the command the docs' screenshots were made with)."""
    return chromium([f"--screenshot={shot}", f"--window-size={window[0]},{window[1]}", "--hide-scrollbars", page.as_uri()], profile)
