"""Small HTTP client and request builders for the real-WebUI suite and the benchmark."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import requests
from PIL import Image

PG = "personalization guidance"
REF = "pg reference"
PROMPT_LORA = "a photo of a cat <lora:rand_lora:1>"
# the harness model families: checkpoint name prefix -> (its subject LoRA, a second LoRA of the same family)
FAMILY_LORAS = {"rand_sd15": ("rand_lora", "pg_other_lora"), "rand_sd21v": ("rand_sd21v_lora", "rand_sd21v_other_lora"),
                "rand_sdxl": ("rand_sdxl_lora", "rand_sdxl_other_lora"),
                "rand_anima": ("rand_anima_lora", "rand_anima_other_lora"),  # harness_models_dit.py
                "rand_lumina2": ("rand_lumina2_lora", "rand_lumina2_other_lora"),
                "rand_zimage": ("rand_zimage_lora", "rand_zimage_other_lora"),
                "rand_chroma": ("rand_chroma_lora", "rand_chroma_other_lora"),
                "rand_wan": ("rand_wan_lora", "rand_wan_other_lora")}


def family_of(checkpoint_title: str) -> str:
    """'rand_sdxl_dreambooth.safetensors [hash]' -> 'rand_sdxl' (the longest matching family prefix)."""
    return max((f for f in FAMILY_LORAS if checkpoint_title.startswith(f)), key=len, default="")
NEGATIVE = "blurry, low quality"
FIELDS = ("enabled", "omega", "loras", "weak_prompt", "start", "end", "hires", "base_checkpoint", "base_mode")
DEFAULTS = dict(enabled=True, omega=0.5, loras="", weak_prompt="negative", start=0.0, end=1.0, hires=True,
                base_checkpoint="None", base_mode="exact")


class ApiError(AssertionError):
    def __init__(self, status: int, body: str):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {body[:600]}")


class Client:
    def __init__(self, url: str, timeout: float = 900):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        self.session.trust_env = False  # loopback: never through a proxy

    def get(self, path: str):
        r = self.session.get(self.url + path, timeout=self.timeout)
        if r.status_code != 200:
            raise ApiError(r.status_code, r.text)
        return r.json()

    def post_raw(self, path: str, payload: dict) -> requests.Response:
        r = self.session.post(self.url + path, json=payload, timeout=self.timeout)
        if r.status_code >= 500:
            self.session.close()  # Forge's server resets a kept-alive connection after an unhandled exception
        return r

    def post(self, path: str, payload: dict):
        r = self.post_raw(path, payload)
        if r.status_code != 200:
            raise ApiError(r.status_code, r.text)
        return r.json()

    def generate(self, payload: dict, mode: str = "txt2img") -> dict:
        """POST a generation; returns {'pixels': [uint8 HxWx3 per image], 'info': dict, 'infotexts': [...]}."""
        data = self.post(f"/sdapi/v1/{mode}", payload)
        info = json.loads(data["info"])
        images = [decode(b) for b in data["images"]]
        same = len({im.shape for im in images}) == 1
        return {"pixels": images[0] if len(images) == 1 or not same else np.stack(images), "images": images, "info": info,
                "infotexts": info.get("infotexts", []), "raw_images": data["images"]}

    def txt2img(self, payload: dict) -> dict:
        return self.generate(payload, "txt2img")

    def img2img(self, payload: dict) -> dict:
        return self.generate(payload, "img2img")


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.uint8)


def encode(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def base_request(prompt: str = PROMPT_LORA, size: int = 64, steps: int = 3, seed: int = 1234, **extra) -> dict:
    payload = {
        "prompt": prompt, "negative_prompt": NEGATIVE, "seed": seed, "steps": steps, "cfg_scale": 7,
        "width": size, "height": size, "sampler_name": "Euler", "batch_size": 1, "n_iter": 1,
        "send_images": True, "save_images": False, "do_not_save_samples": True, "do_not_save_grid": True,
        "override_settings": {"emphasis": "No norm"}, "alwayson_scripts": {},
    }
    payload.update(extra)
    return payload


SCHEDULE_FIELDS = ("schedule", "omega_end")  # positional 9 and 10: sent only when asked for (older requests keep 9)


def pg_args(**values) -> list:
    merged = {**DEFAULTS, "schedule": "constant", "omega_end": 0.0, **values}
    fields = FIELDS + SCHEDULE_FIELDS if any(k in values for k in SCHEDULE_FIELDS) else FIELDS
    return [merged[f] for f in fields]


def with_pg(payload: dict, args) -> dict:
    out = json.loads(json.dumps(payload))
    out["alwayson_scripts"][PG] = {"args": args}
    return out


def with_ref(payload: dict, omega: float, weak_prompt: str = "negative", base: str = "None", loras: str = "",
             schedule: str = "") -> dict:
    """The slow reference at ω; `schedule` ("auto", "linear:OMEGA_END:START:END", ...): ω per step
    (tests/webui/pg_reference_common.step_omegas)."""
    out = json.loads(json.dumps(payload))
    out["alwayson_scripts"][REF] = {"args": [True, omega, weak_prompt, base, loras, schedule]}
    return out


def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max, mean) absolute pixel difference in 1/255 units."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.max()), float(d.mean())


def assert_matches(pg, ref, off, what: str, *, match_max: float, match_mean: float, changed_mean: float,
                   changed_max: float = 0.0) -> None:
    """PG's image equals the slow reference's within (match_max, match_mean) and differs from PG off by at
    least (changed_max, changed_mean): 1/255 units. Prints the figures the README quotes."""
    mx, mean = diff(pg, ref)
    off_max, off_mean = diff(pg, off)
    print(f"{what}: PG vs reference max {mx}/255 mean {mean:.4f}/255; PG vs off max {off_max}/255 mean {off_mean:.2f}/255")
    assert off_mean >= changed_mean and off_max >= changed_max, \
        f"{what}: PG did not change the image enough (max {off_max}/255, mean {off_mean:.3f}/255)"
    assert mx <= match_max and mean <= match_mean, f"{what}: PG vs reference max {mx}/255, mean {mean:.4f}/255"
