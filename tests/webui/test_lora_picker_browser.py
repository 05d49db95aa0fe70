"""The LoRA picker (javascript/pg_lora_picker.js) in a real WebUI page, through headless Chromium (opt-in).

Skipped unless PG_WEBUI_URL is set (and `chromium` and `websocket-client` are installed). Types a prompt with
two LoRAs and a negative prompt with a third, checks the chips offer exactly the prompt's two, clicks one with
the mouse, types in the field by hand, generates with PG on and reads the selection back from the infotext,
and checks the img2img tab's picker follows its own prompt. As a script it saves the README's screenshot:

    python tests/webui/test_lora_picker_browser.py --url http://127.0.0.1:7861 --out docs/img/lora_picker_a1111.png

Gradio 3.41 answers 403 to every /file= path with a folder starting with "." in it, so a WebUI under
~/.cache serves none of its JavaScript (no picker, and none of A1111's own scripts either): start the harness
from a path without one, e.g. `mount --bind ~/.cache/pg-webui-harness /tmp/pgh; HARNESS=/tmp/pgh start.sh`.
The test skips, naming this, when GET /file=script.js is refused. Forge Neo (gradio 4) serves `file=` paths only
under its data path; its harness start.sh allows the tree too (`--gradio-allowed-path`), as a plain install's data
path is the tree itself:

    python tests/webui/test_lora_picker_browser.py --url http://127.0.0.1:7874 --out docs/img/lora_picker_forge_neo.png
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FIELD = "#script_{tab}_personalization_guidance_loras"
ACCORDION = "#script_{tab}_personalization_guidance_enabled"


def open_browser(url: str, port: int = 9334):
    """take_screenshots.open_browser with every host name but loopback failing at once: the page's one remote
    script (A1111's iframe-resizer from cdnjs) otherwise hangs offline and holds back every script after it,
    the WebUI's and this extension's. Another debugging port, so the two tools can run side by side."""
    import take_screenshots
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                             f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
                             "--window-size=1400,1800", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(60):
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            target = next(t for t in targets if t.get("type") == "page")
            return proc, profile, take_screenshots.Page(target["webSocketDebuggerUrl"])
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("chromium did not start")


def _q(selector: str) -> str:
    return f"gradioApp().querySelector({json.dumps(selector)})"


def type_into(page, selector: str, text: str, replace: bool = True) -> None:
    """Focus the element and type like a user (CDP Input.insertText fires the input events a keyboard does)."""
    page.js(f"(() => {{ const e = {_q(selector)}; e.focus();"
            f" if ({json.dumps(replace)}) e.select(); else e.setSelectionRange(e.value.length, e.value.length); }})()")
    page.call("Input.insertText", text=text)


def click(page, selector: str) -> None:
    """A real mouse click at the element's centre (not element.click()): what a user's click does."""
    x, y = page.js(f"(() => {{ const e = {_q(selector)}; e.scrollIntoView({{block: 'center'}});"
                   " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def chips(page, tab: str):
    """[(name, pressed)] of the visible chips under the tab's field."""
    return [tuple(c) for c in page.js(
        f"[...{_q(FIELD.format(tab=tab) + '_picker')}.querySelectorAll('.pg-lora-chip')]"
        ".filter(c => c.offsetParent !== null).map(c => [c.textContent, c.getAttribute('aria-pressed') === 'true'])")]


def field_value(page, tab: str) -> str:
    return page.js(f"{_q(FIELD.format(tab=tab) + ' textarea, ' + FIELD.format(tab=tab) + ' input')}.value")


def wait_until(condition, seconds: float = 10):
    deadline = time.time() + seconds
    while True:
        value = condition()
        if value or time.time() > deadline:
            return value
        time.sleep(0.25)


def emphasis(url: str, value: str | None = None) -> str:
    """Get (or set) the WebUI's emphasis setting: the harness's random text encoder gives NaN conditioning
    under "Original" for some prompts (../shared/webui-harness/README.md, Gotchas), so the job pins "No norm"."""
    if value is not None:
        request = urllib.request.Request(url + "/sdapi/v1/options", data=json.dumps({"emphasis": value}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request).read()
    return json.load(urllib.request.urlopen(url + "/sdapi/v1/options"))["emphasis"]


def check_picker(page, loras=("rand_lora", "pg_other_lora"), screenshot: str | None = None, url: str | None = None):
    """The whole check on an open page (with `url`, also a generation); raises AssertionError on failure."""
    first, second = loras
    tab = "txt2img"
    page.wait_for(f"!!document.querySelector('{FIELD.format(tab=tab)}_picker')", 120)
    click(page, ACCORDION.format(tab=tab) + " .label-wrap")  # open = PG on (the header is the switch)
    page.wait_for(f"{_q(FIELD.format(tab=tab))}.offsetParent !== null")
    type_into(page, "#txt2img_prompt textarea",
              f"a photo of a cat <lora:{first}:1>, (in a garden:1.2) BREAK <lora:{second}:0.5>")
    type_into(page, "#txt2img_neg_prompt textarea", "blurry <lora:negative_only:1>")
    got = wait_until(lambda: chips(page, tab) == [(first, False), (second, False)])
    assert got, f"offered {chips(page, tab)}, want {first} and {second}, unpressed (negative prompt's not offered)"

    click(page, f"{FIELD.format(tab=tab)}_picker .pg-lora-chip[data-name='{second}']")
    assert wait_until(lambda: field_value(page, tab) == second), field_value(page, tab)
    assert wait_until(lambda: chips(page, tab) == [(first, False), (second, True)]), chips(page, tab)

    type_into(page, FIELD.format(tab=tab) + " textarea", f", {first}", replace=False)  # by hand, as before
    assert wait_until(lambda: field_value(page, tab) == f"{second}, {first}"), field_value(page, tab)
    assert wait_until(lambda: chips(page, tab) == [(first, True), (second, True)]), chips(page, tab)
    click(page, f"{FIELD.format(tab=tab)}_picker .pg-lora-chip[data-name='{first}']")
    assert wait_until(lambda: field_value(page, tab) == second), field_value(page, tab)

    # the prompt changes: the chips follow, the field keeps what the user chose
    type_into(page, "#txt2img_prompt textarea", f"a photo of a cat <lora:{second}:0.5>")
    assert wait_until(lambda: chips(page, tab) == [(second, True)]), chips(page, tab)
    type_into(page, "#txt2img_prompt textarea",
              f"a photo of a cat <lora:{first}:1>, (in a garden:1.2) BREAK <lora:{second}:0.5>")
    assert wait_until(lambda: chips(page, tab) == [(first, False), (second, True)]), chips(page, tab)
    if screenshot:
        page.capture(ACCORDION.format(tab=tab), screenshot)

    if url:  # the field's value as gradio sends it: the job's infotext names the selection
        for name, value in (("width", 64), ("height", 64), ("steps", 2)):
            type_into(page, f"#txt2img_{name} input[type=number]", str(value))
        type_into(page, "#txt2img_neg_prompt textarea", "blurry")  # no missing LoRA in the job
        info_js = f"{_q('#html_info_txt2img')}.textContent"
        before = page.js(info_js)
        was = emphasis(url)
        try:
            emphasis(url, "No norm")
            click(page, "#txt2img_generate")
            info = wait_until(lambda: (lambda t: t != before and ("PG LoRAs" in t or "rror" in t) and t)(
                page.js(info_js)), 240)
        finally:
            emphasis(url, was)
        assert info and f"PG LoRAs: {second}," in info, info

    # img2img: its own picker, following its own prompt
    page.js("[...gradioApp().querySelectorAll('#tabs > .tab-nav button, #tabs > div > button')]"
            ".find(b => b.textContent.trim() === 'img2img').click()")
    page.wait_for(f"{_q('#img2img_prompt textarea')}.offsetParent !== null")
    click(page, ACCORDION.format(tab="img2img") + " .label-wrap")
    type_into(page, "#img2img_prompt textarea", f"<lyco:{second}:1> a cat")
    assert wait_until(lambda: chips(page, "img2img") == [(second, False)]), chips(page, "img2img")


@pytest.fixture(scope="module")
def page(webui_url):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    try:
        urllib.request.urlopen(webui_url + "/file=script.js").close()
    except urllib.error.HTTPError as e:  # gradio 3 refuses every /file= path with a dot-folder in it
        pytest.skip(f"the WebUI serves no JavaScript (GET /file=script.js: {e.code}); a WebUI under a dot-folder "
                    "(~/.cache/...) cannot: start it from a path without one, e.g. a bind mount of $HARNESS")
    proc, profile, page = open_browser(webui_url + "/")
    yield page
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(profile, ignore_errors=True)


def test_lora_picker_in_the_page(page, api, webui_url, tmp_path):
    check_picker(page, screenshot=str(tmp_path / "lora_picker.png"), url=webui_url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7861")
    parser.add_argument("--out", default="docs/img/lora_picker_a1111.png")
    parser.add_argument("--loras", default="rand_lora,pg_other_lora")
    parser.add_argument("--no-generate", action="store_true", help="skip the generation (e.g. a server in use)")
    args = parser.parse_args()
    proc, profile, page = open_browser(args.url.rstrip("/") + "/")
    try:
        check_picker(page, tuple(args.loras.split(",")), args.out, None if args.no_generate else args.url.rstrip("/"))
        print("PASS: LoRA picker")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
