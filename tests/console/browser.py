"""Helpers for the console's browser tests: a `tidm console` process, and Debian's chromium driven by
Playwright (never a downloaded browser). No tests here."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cli.process_support import start, stop

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """Poll `url` until it answers 200 (bounded; fails with the process's log)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a local test URL
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} did not come up:\n{log.read_text()}")
        time.sleep(0.2)


@contextmanager
def console_process(folder: Path, config: dict[str, Any], env: dict[str, str]) -> Iterator[str]:
    """`tidm console` with `config` (its console.port is set here); yields its base URL."""
    port = free_port()
    config = {**config, "console": {**config.get("console", {}), "port": port, "secure_cookie": False}}
    path = folder / "console.yaml"
    path.write_text(yaml.safe_dump(config))
    log = folder / "console.log"
    proc = start(["console", "--config", str(path)], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, log)
        yield url
    finally:
        stop(proc, log)


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A Playwright page in headless Debian chromium at 1400x900."""
    if not CHROMIUM.exists():
        pytest.fail("the browser tests need Debian's chromium: `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            yield context.new_page()
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    """Keep a screenshot of the page as a test artefact (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def login(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/units")
    page.wait_for_url(f"{url}/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{url}/units")
