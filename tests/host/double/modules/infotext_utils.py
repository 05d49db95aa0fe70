"""Infotext. Claims: quote(v) is v unchanged unless str(v) holds ",", ":" or a newline, then its JSON string;
parse_generation_parameters takes the last line as "key: value" pairs when it holds 3 or more of them
(a quoted value is JSON-decoded, "WxH" values also give "key-1"/"key-2"); a bare word between commas is not
a key. Pasting: each PasteField(component, target) gets target(params) when callable, else params[target];
None leaves the control alone, an update is used as is, other values are converted to the type of the
control's value ("False" -> False for a checkbox, int controls take float(v)).
"""
import json
import re

import gradio as gr

_PAIR = re.compile(r'(?P<key>\w[\w /-]+):\s*(?P<value>"(?:[^"\\]|\\.)+"|[^,]*)(?:,|$)')


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        self.component, self.api = component, api


def quote(text):
    return json.dumps(text, ensure_ascii=False) if any(ch in str(text) for ch in ",:\n") else text


def parse_generation_parameters(text, skip_fields=None):
    lines = text.strip().split("\n")
    params = _PAIR.findall(lines[-1])
    if len(params) < 3:
        params = []
    else:
        lines = lines[:-1]
    res = {}
    prompt, negative = [], []
    for line in lines:
        (negative if negative or line.startswith("Negative prompt:") else prompt).append(line)
    res["Prompt"] = "\n".join(prompt)
    res["Negative prompt"] = "\n".join(negative)[len("Negative prompt:"):].strip()
    for key, value in params:
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.groups()
        else:
            res[key] = value
    return res


def paste(infotext, fields):
    """The UI's paste button: one gr.update per field."""
    params = parse_generation_parameters(infotext)
    out = []
    for component, target in fields:
        value = target(params) if callable(target) else params.get(target)
        if value is None:
            out.append(gr.update())
        elif isinstance(value, dict) and value.get("__type__") == "update":
            out.append(value)
        else:
            kind = type(component.value)
            try:
                converted = False if kind is bool and value == "False" else float(value) if kind is int else kind(value)
                out.append(gr.update(value=converted))
            except Exception:
                out.append(gr.update())
    return out
