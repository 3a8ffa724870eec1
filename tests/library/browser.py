"""Headless Chromium for page tests: the DOM after the page's scripts ran, or a screenshot.

A screenshot by hand: `python -m tests.library.browser 'http://127.0.0.1:8000/?q=a+red+circle' page.png`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def _run(url: str, *action: str, timeout: float = 60) -> str:
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing cached between runs
        command = [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",  # lets the page's fetches finish before the DOM is taken
            *action, url,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def dump_dom(url: str) -> str:
    return _run(url, "--dump-dom")


def screenshot(url: str, out: Path, size: tuple[int, int] = (1100, 760)) -> Path:
    width, height = size
    _run(url, f"--screenshot={Path(out).absolute()}", f"--window-size={width},{height}", "--hide-scrollbars")
    return Path(out)


if __name__ == "__main__":
    print(screenshot(sys.argv[1], Path(sys.argv[2])))
