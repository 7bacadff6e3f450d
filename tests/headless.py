"""Pages checked in a real browser: headless Chromium (Debian's ``chromium``) run once per
check, without any driver library.

`page_checks` loads a page with a small script appended that, once everything has loaded,
writes what it finds (tables, images and their ``naturalWidth``, the visible text) into
the DOM as JSON; ``chromium --dump-dom`` prints that DOM. `screenshot` saves a PNG.

Where chromium is absent the tests skip, saying so, unless ``XT_REQUIRE_BROWSER`` is set
(CI sets it and installs chromium, see .ci/run), where its absence fails them.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHECK_SCRIPT = """
<script>
function xtReport() {
  const imgs = Array.from(document.images).map(i => ({src: i.getAttribute('src'),
    complete: i.complete, naturalWidth: i.naturalWidth}));
  const tables = Array.from(document.querySelectorAll('table')).map(t => t.rows.length);
  const extra = (typeof window.xtExtra === 'function') ? window.xtExtra() : null;
  const out = document.createElement('pre');
  out.id = 'xt-check';
  out.textContent = JSON.stringify({images: imgs, tables: tables,
    text: document.body.innerText, extra: extra});
  document.body.appendChild(out);
}
window.addEventListener('load', () => setTimeout(xtReport, %(delay)d));
</script>
"""


def chromium() -> str:
    """The chromium executable, or skip (fail where ``XT_REQUIRE_BROWSER`` is set)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "chromium is not installed (apt-get install -y chromium); browser checks skipped"
    if os.environ.get("XT_REQUIRE_BROWSER"):
        pytest.fail(reason.replace("skipped", "required here (XT_REQUIRE_BROWSER is set)"))
    pytest.skip(reason)


def _run(args: list[str], timeout: float = 120) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-dev-shm-usage", "--no-first-run", "--mute-audio", *args]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def dump_dom(url: str, budget_ms: int = 5000, timeout: float = 120) -> str:
    """The DOM of ``url`` after it loaded and ``budget_ms`` of (virtual) time."""
    return _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], timeout)


def checks_from_dom(dom: str) -> dict:
    """The JSON `CHECK_SCRIPT` wrote into a dumped DOM."""
    found = re.findall(r'<pre id="xt-check">(\{.*?)</pre>', dom, re.S)
    assert found, f"the check script did not run; DOM starts: {dom[:500]}"
    return json.loads(html.unescape(found[-1]))


def page_checks(page: Path, delay_ms: int = 200) -> dict:
    """Load a copy of the HTML file ``page`` (beside it, so relative links resolve) with the
    check script appended; what it found."""
    probe = page.with_name(f".check-{page.name}")
    text = page.read_text()
    probe.write_text(text.replace("</body>", CHECK_SCRIPT % {"delay": delay_ms} + "</body>"))
    try:
        return checks_from_dom(dump_dom(probe.resolve().as_uri()))
    finally:
        probe.unlink()


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1600,
               budget_ms: int = 5000) -> Path:  # fmt: skip
    """A PNG of ``url`` at ``width`` x ``height`` CSS pixels."""
    _run([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
          f"--screenshot={path}", url])  # fmt: skip
    assert path.stat().st_size > 0
    return path
