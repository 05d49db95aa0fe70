"""Screenshots of the PG accordion and Settings section in the real WebUI, through headless Chromium's
DevTools protocol (a tool for the README, not a test).

    python tests/webui/take_screenshots.py [--url http://127.0.0.1:7861] [--out docs/img]

Opens the page, waits for the UI, clicks like a user (the accordion header; Settings → Personalization
Guidance) and captures the element. Needs `chromium` (Debian) and `websocket-client` (PyPI).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket

PORT = 9333


class Page:
    """The minimum of the DevTools protocol: evaluate JS, capture a clip."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(message["error"])
                return message.get("result", {})

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, seconds: float = 90):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.js(expression):
                return
            time.sleep(0.5)
        raise TimeoutError(expression)

    def capture(self, selector: str, path: str, pad: int = 8):
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                      " const r = e.getBoundingClientRect();"
                      " return [r.x + window.scrollX, r.y + window.scrollY, r.width, r.height]; })()")
        clip = {"x": max(box[0] - pad, 0), "y": max(box[1] - pad, 0), "width": box[2] + 2 * pad,
                "height": box[3] + 2 * pad, "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        print("wrote", path, f"{int(box[2])}x{int(box[3])}")


def open_browser(url: str):
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--remote-debugging-port={PORT}", f"--user-data-dir={profile}",
                             "--window-size=1400,1800", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(60):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json"))
            page = next(t for t in targets if t.get("type") == "page")
            return proc, profile, Page(page["webSocketDebuggerUrl"])
        except Exception:
            time.sleep(0.5)
    raise RuntimeError("chromium did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7861/")
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args()
    proc, profile, page = open_browser(args.url)
    try:
        accordion = "#script_txt2img_personalization_guidance_enabled"
        page.wait_for(f"!!document.querySelector('{accordion} .label-wrap')")
        page.js(f"document.querySelector('{accordion} .label-wrap').click()")
        time.sleep(1.5)
        page.capture(accordion, os.path.join(args.out, "webui_accordion.png"))
        page.js("[...document.querySelectorAll('#tabs > .tab-nav button')].find(b => b.textContent.trim() == 'Settings').click()")
        page.wait_for("[...document.querySelectorAll('#settings .tab-nav button')].some(b => b.textContent.includes('Personalization Guidance'))")
        page.js("[...document.querySelectorAll('#settings .tab-nav button')].find(b => b.textContent.includes('Personalization Guidance')).click()")
        time.sleep(1.5)
        page.capture("#settings_personalization_guidance", os.path.join(args.out, "webui_settings.png"))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
