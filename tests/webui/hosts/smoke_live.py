"""A short live check of PG in a running fork (stdlib only): python3 smoke_live.py http://127.0.0.1:7871 LORA

  off_vs_omega1   PG at ω = 1 gives the same pixels as PG off
  omega_half      PG at ω = 0.5 gives another image, its infotext has 'PG omega: 0.5' and no 'PG note'
  bad_input       ω = 2 answers 4xx naming 'omega', and the next PG-off image is the same as before
Prints PASS/FAIL lines; exit 1 on any FAIL. The full live suite is tests/webui (A1111's harness).
"""
import base64
import json
import struct
import sys
import urllib.error
import urllib.request
import zlib

URL, LORA = sys.argv[1].rstrip("/"), sys.argv[2]
failures = 0


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def pixels(png: bytes) -> bytes:
    """The image data of a PNG (its IDAT chunks inflated): the API's PNG also carries the infotext, which
    differs between PG off and PG at ω = 1 ("PG omega: 1.0"), so whole-file bytes cannot be compared."""
    data, at = b"", 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            data += png[at + 8:at + 8 + length]
        at += 12 + length
    return zlib.decompress(data)


def txt2img(pg=None):
    body = {"prompt": f"a photo of sks dog <lora:{LORA}:1>", "negative_prompt": "blurry", "steps": 4,
            "width": 64, "height": 64, "seed": 1, "cfg_scale": 5, "sampler_name": "Euler"}
    if pg is not None:
        body["alwayson_scripts"] = {"Personalization Guidance": {"args": [pg]}}
    req = urllib.request.Request(f"{URL}/sdapi/v1/txt2img", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            out = json.loads(r.read())
        return 200, pixels(base64.b64decode(out["images"][0])), json.loads(out["info"])["infotexts"][0]
    except urllib.error.HTTPError as e:
        return e.code, None, e.read().decode(errors="replace")


code, off, _ = txt2img()
check("off", code == 200, f"HTTP {code}")
code, one, _ = txt2img({"enabled": True, "omega": 1.0})
check("off_vs_omega1", code == 200 and one == off, f"HTTP {code}, same pixels {one == off}")
code, half, info = txt2img({"enabled": True, "omega": 0.5})
check("omega_half", code == 200 and half != off and "PG omega: 0.5" in info and "PG note" not in info,
      f"HTTP {code}, differs {half != off}, infotext PG part: {info[info.find('PG '):][:160]!r}")
code, _, detail = txt2img({"enabled": True, "omega": 2})
check("bad_input", 400 <= code < 500 and "omega" in detail, f"HTTP {code}: {detail[:160]!r}")
code, again, _ = txt2img()
check("bad_input.next_off_same", code == 200 and again == off, f"HTTP {code}, same pixels {again == off}")
print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
