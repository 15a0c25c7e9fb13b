"""The rule console in a real headless browser (Debian's Chromium driven by
Playwright) against a running `engine run` with the API: sign in, see the
project's rule with its live counters, test a rule as you type (output,
explain trace, lint warning). A screenshot of each step is saved under
`test-artifacts/` (kept by CI, ignored by git)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.api.conftest import TOKEN_A, free_port
from tests.api_aliyun.test_lifecycle import Receiver, until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _call(url: str, method: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"X-Auth-Token": TOKEN_A,
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.status == 200


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(180)
def test_console_signs_in_shows_counters_and_tests_a_rule(tmp_path):
    assert CHROMIUM is not None, "Chromium is needed (scripts/services.sh up installs it)"
    from playwright.sync_api import expect, sync_playwright

    receiver = Receiver()
    source, api = free_port(), free_port()
    config = tmp_path / "engine.yaml"
    config.write_text(f"""\
sources:
  - http: {{listen: "127.0.0.1:{source}", path: "/in", auth: none}}
worker: {{state_dir: "{tmp_path / 'state'}"}}
api:
  listen: "127.0.0.1:{api}"
  storage: "sqlite://{tmp_path / 'config.db'}"
  projects:
    proj-a: {{tokens: ["${{TOKEN}}"]}}
""")
    log = open(tmp_path / "engine.log", "w")  # noqa: SIM115 - the child keeps its descriptor
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(config)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKEN": TOKEN_A, "PYTHONPATH": str(REPO)})
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        base = f"http://127.0.0.1:{api}"
        until(lambda: _port_open(api) and _port_open(source), 30)
        rules = f"{base}/v5/iot/proj-a/routing-rule"
        rule = _call(f"{rules}/rules", "POST", {
            "rule_name": "online", "subject": {"resource": "device.status", "event": "update"},
            "app_type": "GLOBAL", "where": "notify_data.body.status = 'ONLINE'",
            "active": True})
        _call(f"{rules}/actions", "POST", {
            "rule_id": rule["rule_id"], "channel": "HTTP_FORWARDING",
            "channel_detail": {"http_forwarding": {"url": f"{receiver.url}/hook"}}})
        event = {"resource": "device.status", "event": "update",
                 "notify_data": {"header": {"device_id": "d1"}, "body": {"status": "ONLINE"}}}
        until(lambda: (_post(f"http://127.0.0.1:{source}/in", json.dumps(event).encode()),
                       receiver.received)[1], 30)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{base}/console")

            # A wrong token is refused with the API's reason.
            page.fill("#project", "proj-a")
            page.fill("#token", "not-the-token")
            page.click("#signin-button")
            expect(page.locator("#signin-error")).to_contain_text("401")

            page.fill("#token", TOKEN_A)
            page.click("#signin-button")
            row = page.locator(f'tr[data-rule="{rule["rule_id"]}"]')
            expect(row).to_contain_text("device.status/update")
            expect(row.locator(".action")).to_contain_text(": 1 · 0 · 0", timeout=15000)
            page.screenshot(path=str(ARTIFACTS / "console-rules.png"), full_page=True)

            page.click('button[data-tab="tester"]')
            page.select_option("#sample", "device.status/update")
            page.fill("#where", 'notify_data.body.status = "ONLINE"')
            expect(page.locator("#result")).to_have_text("no match", timeout=10000)
            expect(page.locator("#warnings")).to_contain_text("single quotes")
            expect(page.locator("#explain-rows")).to_contain_text("notify_data.body.status")
            expect(page.locator("#explain-rows")).to_contain_text("UNKNOWN")

            page.fill("#where", "notify_data.body.status <> 'nothing'")
            page.fill("#select", "notify_data.header.device_id AS device")
            expect(page.locator("#result")).to_have_text("match", timeout=10000)
            expect(page.locator("#output")).to_contain_text('"device"')
            page.screenshot(path=str(ARTIFACTS / "console-tester.png"), full_page=True)
            browser.close()
        assert not [e for e in errors if "401" not in e], errors  # CSP or script errors
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, (tmp_path / "engine.log").read_text()
    assert (ARTIFACTS / "console-tester.png").stat().st_size > 10_000
