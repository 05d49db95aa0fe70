"""Infotext text as the WebUI writes and parses it (modules/infotext_utils.py, A1111 v1.10.1 rules).

Writing: `key: value` joined by ', ', a value quoted as JSON when it contains ',', ':' or a newline.
Parsing: the same regex the WebUI uses for `key: value` pairs, unquoting JSON-quoted values.
"""
import json
import re

PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(text):
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def through_infotext(params: dict) -> dict:
    """Write `params` as an infotext line after a typical prefix, and parse it back to key -> str."""
    line = ", ".join(["Steps: 20", "Sampler: Euler"] + [f"{k}: {quote(v)}" for k, v in params.items()])
    return {k: unquote(v) for k, v in PAIR.findall(line)}
