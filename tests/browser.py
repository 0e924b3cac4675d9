"""A headless Chromium with networking off, driven by selenium, for opening reports the way a reader does.

``open_offline(tmp_dir)`` starts it (Debian's /usr/bin/chromium and /usr/bin/chromedriver; the
test skips when they are missing). Every page gets ``window.alert``/``confirm``/``prompt``
replaced by recorders before any of its scripts run, so a test can assert no injected script ran.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

RECORD_DIALOGS = """
window.__dialogs = [];
for (const name of ["alert", "confirm", "prompt"]) {
  window[name] = function (msg) { window.__dialogs.push(name + ":" + String(msg)); };
}
"""


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists() and not shutil.which(Path(path).name):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    return None


def open_offline(profile_dir: Path, width: int = 1400, height: int = 1000):
    """A headless Chrome (selenium webdriver) that cannot reach any network and records dialogs and console logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 f"--user-data-dir={profile_dir}", f"--window-size={width},{height}",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                 "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_DIALOGS})
    return driver


def wait_for(driver, script: str, timeout: float = 60.0, poll: float = 0.05):
    """Poll ``return <script>`` until it is truthy; returns its value (TimeoutError after ``timeout`` s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"waited {timeout} s for {script}")


def severe_logs(driver) -> list[dict]:
    """Console entries at level SEVERE (errors) since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def full_screenshot(driver, path: Path) -> Path:
    """A PNG of the whole page, beyond the viewport (Chrome DevTools ``Page.captureScreenshot``)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
