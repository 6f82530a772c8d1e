"""The admin page in a real headless Chromium, driven by selenium: it shows
the live lag of a paused projection growing, its resume button works, a
command form submits and the stream browser shows the new event."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from motet.engine import Engine
from motet.engine.example import CreateUser
from motet.engine.net.http import open_http_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _need_browser() -> tuple[str, str]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        message = (
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM, CHROMEDRIVER


def _user(user_id: str) -> CreateUser:
    return CreateUser(
        user_id=user_id, name=f"Name {user_id}", email=f"{user_id}@example.org", password="pw"
    )


def _browse(url: str, profile: Path, shots: Path, send: Callable[[str], Any]) -> None:
    """The browser's side, run in a thread; ``send(user_id)`` creates a user
    through the engine (in the trio thread)."""
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = _need_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,2000")
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        wait = WebDriverWait(
            driver, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        driver.get(url)
        row = 'tr[data-name="users"]'

        def cell(name: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, f"{row} .{name}").text)

        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row) and cell("state") == "paused")
        wait.until(lambda d: int(cell("lag-events")) == 3)
        # The lag grows live while the projection stays paused.
        send("later-1")
        send("later-2")
        wait.until(lambda d: int(cell("lag-events")) == 5)
        wait.until(lambda d: float(cell("lag-seconds")) > 0)
        driver.save_screenshot(str(shots / "paused.png"))

        driver.find_element(By.CSS_SELECTOR, f'{row} button[data-action="resume"]').click()
        wait.until(lambda d: cell("state") == "running" and int(cell("lag-events")) == 0)
        assert int(cell("position")) == 5

        form = 'form[data-command="CreateUser"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, form))
        for name, value in (
            ("user_id", "web1"),
            ("name", "Ada"),
            ("email", "ada@example.org"),
            ("password", "pw"),
            ("city", "Oslo"),
        ):
            driver.find_element(By.CSS_SELECTOR, f'{form} input[name="{name}"]').send_keys(value)
        driver.find_element(By.CSS_SELECTOR, f'{form} button[type="submit"]').click()
        result = f"{form} pre.result"
        wait.until(lambda d: '"User-web1"' in d.find_element(By.CSS_SELECTOR, result).text)
        assert '"position": 6' in driver.find_element(By.CSS_SELECTOR, result).text

        # The form filled the stream browser's id with the new stream.
        assert driver.find_element(By.ID, "stream-id").get_attribute("value") == "User-web1"
        driver.find_element(By.ID, "stream-load").click()
        events = "#stream-events tbody tr"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, events))
        [event] = driver.find_elements(By.CSS_SELECTOR, events)
        assert event.get_attribute("data-position") == "6"
        assert "UserCreated" in event.text
        assert "Ada" in event.text
        driver.save_screenshot(str(shots / "stream.png"))
        logs = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not logs, logs
    finally:
        driver.quit()


async def test_admin_page_in_a_headless_browser(engine: Engine, tmp_path: Path) -> None:
    _need_browser()
    engine.projection("users").pause()
    for user_id in ("a", "b", "c"):
        await engine.send(_user(user_id))
    profile = tmp_path / "profile"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    token = trio.lowlevel.current_trio_token()

    def send(user_id: str) -> None:
        trio.from_thread.run(engine.send, _user(user_id), trio_token=token)

    async with open_http_server(engine, port=0) as server:
        url = f"http://127.0.0.1:{server.port}/"
        with trio.fail_after(120):
            await trio.to_thread.run_sync(_browse, url, profile, shots, send)
    assert (shots / "stream.png").stat().st_size > 0
