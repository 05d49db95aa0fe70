"""The LoRA picker's pure functions (javascript/pg_lora_picker.js), run in node on real prompt shapes.

The page part of the file needs a browser (tests/webui/test_lora_picker_browser.py, opt-in); what the chips
offer and what a click writes into the field is decided by these functions alone, so they are checked here
without one. Skipped where `node` is not installed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "javascript", "pg_lora_picker.js")
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

# Reads [function, args] pairs from stdin and prints their results as one JSON list.
RUNNER = """
const m = require(process.argv[1]);
let input = "";
process.stdin.on("data", d => input += d);
process.stdin.on("end", () => {
    const calls = JSON.parse(input);
    console.log(JSON.stringify(calls.map(([fn, args]) => m[fn](...args))));
});
"""


def call_js(*calls):
    """[(function name, [args...]), ...] -> their results, in one node run."""
    out = subprocess.run([NODE, "-e", RUNNER, SCRIPT], input=json.dumps(calls), capture_output=True, text=True,
                         timeout=30, check=True)
    return json.loads(out.stdout)


PROMPTS = [
    # (prompt, names offered)
    ("a photo of sks dog on the moon <lora:my_dog:1>", ["my_dog"]),
    ("<lora:my_dog>, a dog", ["my_dog"]),  # no weight: the Lora extension's default strength
    ("a dog <lora:my_dog:0.8> in a <lora:add_detail:-0.5> forest", ["my_dog", "add_detail"]),
    ("<lora:my_dog:1:0.5> a dog <lora:style:unet=0.5:te=0.2>", ["my_dog", "style"]),  # te/unet weights
    ("a dog <lora:my_dog:1> AND a cat <lora:my_cat:0.7> :1.2", ["my_dog", "my_cat"]),
    ("((masterpiece, (sks dog <lora:my_dog:1.2>:1.1))), [cat:dog:0.5] <lora:pixel-art:0.6>",
     ["my_dog", "pixel-art"]),
    ("a dog <lora:my_dog:1> BREAK a garden BREAK <lora:add_detail:0.3>", ["my_dog", "add_detail"]),
    ("<lora:sd1.5 my dog v2.1:1> <lora:film-grain_XL.v3:0.4>", ["sd1.5 my dog v2.1", "film-grain_XL.v3"]),
    ("<lyco:my_loha:1> and <lora:my_dog:1>", ["my_loha", "my_dog"]),
    ("<lora:my_dog:1> <lora:My_Dog:0.5> <lyco:my_dog:1> <lora:other:1> <lora:my_dog:0.2>", ["my_dog", "other"]),
    ("[<lora:early:1>:<lora:late:1>:0.5] a dog", ["early", "late"]),
    ("multi\nline <lora:a:1>\n<lora:b:1>", ["a", "b"]),
    ("<hypernet:my_hn:1> <ti:x:1> embedding:foo <lora:real:1>", ["real"]),  # other networks are not LoRAs
    ("<LORA:upper:1> <lora: spaced :1> <lora::1> <lora:a,b:1>", ["spaced"]),  # as the WebUI reads tags
    ("no tags here, (a dog:1.2)", []),
    ("", []),
    ("<lora:unclosed:1 a dog", []),
]


@pytest.fixture(scope="module")
def offered():
    """Every prompt above through loraNames, in one node run (a node start costs ~0.15 s)."""
    return dict(zip([p for p, _ in PROMPTS], call_js(*[("loraNames", [p]) for p, _ in PROMPTS])))


@pytest.mark.parametrize("prompt,names", PROMPTS)
def test_lora_names(offered, prompt, names):
    assert offered[prompt] == names


def test_negative_prompt_is_never_read():
    # the page reads the tab's positive prompt only; the negative prompt's textbox is #<tab>_neg_prompt
    assert call_js(("promptSelector", ["txt2img"]), ("promptSelector", ["img2img"]),
                   ("fieldId", ["txt2img"]), ("fieldId", ["img2img"])) == [
        "#txt2img_prompt textarea", "#img2img_prompt textarea",
        "script_txt2img_personalization_guidance_loras", "script_img2img_personalization_guidance_loras"]
    positive, negative = "a photo of sks dog <lora:my_dog:1>", "blurry <lora:bad_hands:1> <lora:my_dog:-1>"
    assert call_js(("loraNames", [positive])) == [["my_dog"]]
    assert "bad_hands" in call_js(("loraNames", [negative]))[0]  # would be found, were it read


def test_field_id_matches_the_script():
    """The chips attach to the textbox by the id the WebUI gives it: Script.elem_id('loras')."""
    with open(os.path.join(ROOT, "scripts", "personalization_guidance.py"), encoding="utf-8") as f:
        source = f.read()
    assert 'TITLE = "Personalization Guidance"' in source
    assert 'elem_id=self.elem_id("loras")' in source


TOGGLES = [
    # (field text, clicked name, field text after)
    ("", "my_dog", "my_dog"),
    ("my_dog", "my_dog", ""),
    ("my_dog", "style", "my_dog, style"),
    ("my_dog, style", "my_dog", "style"),
    ("  my_dog ,, style ,", "other", "my_dog, style, other"),  # tidied as PG reads it
    ("MY_DOG, style", "my_dog", "style"),  # PG matches names case-insensitively
    ("a, a, b", "c", "a, b, c"),
    ('["my_dog", "style"]', "style", "my_dog"),  # a JSON list from an API client or infotext
    ("sd1.5 my dog v2.1", "film-grain_XL.v3", "sd1.5 my dog v2.1, film-grain_XL.v3"),
    ("[not json", "x", "[not json, x"),
]


@pytest.fixture(scope="module")
def toggled():
    return dict(zip([(t, n) for t, n, _ in TOGGLES], call_js(*[("toggleName", [t, n]) for t, n, _ in TOGGLES])))


@pytest.mark.parametrize("text,name,after", TOGGLES)
def test_toggle_name(toggled, text, name, after):
    assert toggled[(text, name)] == after


def test_toggle_twice_restores_the_names():
    [once] = call_js(("toggleName", ["a, b", "c"]))
    [twice] = call_js(("toggleName", [once, "c"]))
    assert twice == "a, b"


def test_has_name_and_parse_list():
    assert call_js(("hasName", ["a, My_Dog", "my_dog"]), ("hasName", ["a", "my_dog"]),
                   ("parseList", [" a , b,,a "]), ("parseList", [None]), ("parseList", ['["x", " y "]'])) == [
        True, False, ["a", "b"], [], ["x", "y"]]


def test_parse_list_agrees_with_pg():
    """The chips' reading of the field is the script's (pg_ext/config.py:parse_name_list), up to case."""
    from pg_ext.config import parse_name_list
    texts = ["", "a", " a , b,,a ", "my_dog, style", '["x", " y "]', "sd1.5 my dog v2.1, film-grain_XL.v3"]
    got = call_js(*[("parseList", [t]) for t in texts])
    assert got == [list(parse_name_list(t)) for t in texts]
