"""Stand-in for modules/infotext_utils.py (A1111 v1.10.1): PasteField, quote/unquote, parse_generation_parameters, paste logic."""
from __future__ import annotations

import json
import re

from modules import errors, script_callbacks, shared

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


class PasteField(tuple):
    """mirrors infotext_utils.PasteField — a (component, target) tuple with .api/.label/.function."""

    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def quote(text):
    """mirrors infotext_utils.quote — JSON-quote only if the text contains ',', newline or ':'."""
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    """mirrors infotext_utils.unquote."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str, skip_fields: list | None = None):
    """mirrors infotext_utils.parse_generation_parameters (key regex, quoting, 'last line needs ≥3 params', WxH split).

    Of the host's many default fills only "Clip skip" is added; styles are not extracted.
    """
    if skip_fields is None:
        skip_fields = shared.opts.infotext_skip_pasting
    res = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ''
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f"Error parsing \"{k}: {v}\"")
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    if "Clip skip" not in res:
        res["Clip skip"] = "1"
    for key in skip_fields:
        res.pop(key, None)
    return res


def paste_values(infotext, paste_fields):
    """The value logic of infotext_utils.connect_paste.paste_func: parse, on_infotext_pasted, then per (component, key)
    a gr.update dict: callable key → its result; missing/None → gr.update() (control unchanged); else converted
    with type(component.value) ('False' → False for bools, float for ints)."""
    import gradio as gr

    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    res = []
    for output, key in paste_fields:
        if callable(key):
            try:
                v = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                v = None
        else:
            v = params.get(key, None)
        if v is None:
            res.append(gr.update())
        elif isinstance(v, dict) and v.get("__type__") == "update":
            res.append(v)
        else:
            try:
                valtype = type(output.value)
                if valtype == bool and v == "False":
                    val = False
                elif valtype == int:
                    val = float(v)
                else:
                    val = valtype(v)
                res.append(gr.update(value=val))
            except Exception:
                res.append(gr.update())
    return res


def get_override_settings(params, *, skip_fields=None):
    """mirrors infotext_utils.get_override_settings — (infotext key, setting name, value) for settings that differ."""
    res = []
    mapping = [(info.infotext, k) for k, info in shared.opts.data_labels.items() if info.infotext]
    for param_name, setting_name in mapping:
        if param_name in (skip_fields or {}):
            continue
        v = params.get(param_name, None)
        if v is None:
            continue
        v = shared.opts.cast_value(setting_name, v)
        if v == getattr(shared.opts, setting_name, None):
            continue
        res.append((param_name, setting_name, v))
    return res
