"""Headless Chromium from the Debian packages, driven by Selenium through Debian's chromedriver:
for the dashboard's browser tests and docs/screenshots.py. Both are found on PATH, where .ci/run
looks for them. Nothing is downloaded: the driver's path is given, and Selenium Manager is told
to stay offline."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

BINARIES = ("chromium", "chromedriver")  # Debian's packages chromium and chromium-driver
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def missing() -> str | None:
    """Why a browser cannot run here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for name in BINARIES:
        if shutil.which(name) is None:
            return f"{name} is not on PATH (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium():
    """A fresh headless Chromium with its own throwaway profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to fetch a browser or driver
    profile = tempfile.mkdtemp(prefix="tailor-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver, cond, timeout: float = 30.0, what: str = "the page"):
    """Poll `cond()` until it gives something truthy; fail naming `what` and the page's messages."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception:  # the element is not there yet, or was re-rendered under us
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; the page said: {messages(driver)}")


def messages(driver) -> str:
    return " | ".join(e.text for e in driver.find_elements("css selector", ".msg") if e.text)


def by(driver, css):
    return driver.find_element("css selector", css)


def screenshot(driver, path, width: int = 1280) -> None:
    """The whole page, not just the window: grow the window to the page's height first."""
    driver.set_window_size(width, 900)  # the width first: the page's height depends on it
    time.sleep(0.3)  # let the relayout and the last repaint land
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(4000, height + 140))  # + the window's own chrome
    time.sleep(0.2)
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)
