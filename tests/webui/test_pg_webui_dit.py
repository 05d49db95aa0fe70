"""PG on Forge Neo's diffusion transformers (issue 18, item 4), live, against the slow reference.

Skipped unless PG_WEBUI_URL points at a Forge Neo harness started with one of the DiT harness models
(tests/webui/harness_models_dit.py; the run command is in tests/webui/hosts/README.md, "DiT harness models
in Forge Neo") and the fork reference extension (tests/webui/hosts/reference_ext) linked. Each family's model is loaded at start
(its text encoder and VAE as Neo's "VAE / Text Encoder" modules); the other families' tests skip.

Per family: ω = 1 is PG off bit for bit; ω ∈ {0, 0.5} with a DiT-only LoRA, with a LoRA that also patches the
text encoder (Anima: the Qwen3 layers and the LLM adapter, which Neo re-targets to the text encoder; Lumina 2:
Gemma-2's Linears by generic `text_encoders.` keys), next to
a second, unselected LoRA, and at batch 2 match the reference (the host's own LoRA loader at ω × strength in
the uncond branch) within 4/255 and move the image; a LoRA that also patches RMSNorms matches the
reference too (PG runs: no `PG note`); the loaded model's output is unchanged
after all of it (the session fixture in conftest.py, plus a check here).
"""
from __future__ import annotations

import pytest

import webui_client as wc

FAMILY = ("rand_anima", "rand_lumina2", "rand_zimage", "rand_chroma", "rand_wan")
MATCH_MAX = 4.0     # PG vs the slow reference, as for the UNet families (1/255 units)
MATCH_MEAN = 0.5
CHANGED_MEAN = 1.0  # ω < 1 must visibly change the image
# per family: the LoRA that also patches the text encoder, and one whose entries PG cannot correct yet
EXTRA_LORAS = {"rand_anima": {"te": "rand_anima_te_lora", "norm": "rand_anima_norm_lora", "norm_type": "RMSNorm"},
               "rand_lumina2": {"te": "rand_lumina2_te_lora", "norm": "rand_lumina2_norm_lora", "norm_type": "RMSNorm"},
               # Z-Image: its text encoder in fp8 (as users run Qwen3-4B); a diffusers / ai-toolkit LoRA whose
               # to_q/k/v Neo maps to three slices of the fused attention.qkv (offset entries)
               "rand_zimage": {"te": "rand_zimage_te_lora", "norm": "rand_zimage_norm_lora", "norm_type": "RMSNorm",
                               "sliced": "rand_zimage_diffusers_lora"},
               # Chroma: T5-XXL in fp8 with kohya lora_te1_* keys; an ai-toolkit LoRA whose to_q/k/v and proj_mlp
               # Neo maps to slices of the fused qkv and linear1
               "rand_chroma": {"te": "rand_chroma_te_lora", "norm": "rand_chroma_norm_lora", "norm_type": "RMSNorm",
                               "sliced": "rand_chroma_diffusers_lora"},
               # Wan 2.1 as an image model: musubi/kohya and diffusion-pipe (PEFT) LoRAs; one extracted from a full
               # fine-tune with a full `.diff` on the Conv3d patch embedding and on the raw `modulation` parameters
               # (Neo never merges those: PG leaves them as the host does). No text-encoder LoRA: Neo maps kohya
               # T5 keys for `t5xxl` only (comfy/lora.py:159-171), and Wan LoRAs patch the DiT.
               "rand_wan": {"norm": "rand_wan_norm_lora", "norm_type": "RMSNorm", "peft": "rand_wan_peft_lora",
                            "conv3d": "rand_wan_conv3d_lora"}}
# Neo samples Wan one image at a time: its batch slider sets the frame count (modules/processing.py:859-866)
ONE_IMAGE_PER_JOB = ("rand_wan",)


def _prompt(family: str, lora: str | None = None, strength: float = 1.0, other: float | None = None) -> str:
    subject, second = wc.FAMILY_LORAS[family]
    text = f"a photo of a cat <lora:{lora or subject}:{strength:g}>"  # ':1', as conftest's PG-off image
    return text + (f" <lora:{second}:{other:g}>" if other is not None else "")


def _request(prompt: str, **extra) -> dict:
    return wc.base_request(prompt=prompt, **extra)


def assert_matches(pg, ref, off, what):
    wc.assert_matches(pg, ref, off, what, match_max=MATCH_MAX, match_mean=MATCH_MEAN, changed_mean=CHANGED_MEAN)


def test_omega_one_equals_off(api, off_image, loaded_family):
    pg = api.txt2img(wc.with_pg(_request(_prompt(loaded_family)), wc.pg_args(omega=1.0)))
    mx, mean = wc.diff(pg["pixels"], off_image)
    assert mx == 0, f"ω=1 vs off: max {mx}/255 mean {mean:.3f}/255 (must be bit for bit)"
    text = pg["infotexts"][0]
    assert "PG omega: 1.0" in text and "PG note" not in text, text


def test_omega_zero_differs(api, off_image, loaded_family):
    pg = api.txt2img(wc.with_pg(_request(_prompt(loaded_family)), wc.pg_args(omega=0.0)))
    mean = wc.diff(pg["pixels"], off_image)[1]
    assert "PG note" not in pg["infotexts"][0], pg["infotexts"][0]
    assert mean >= CHANGED_MEAN, f"ω=0 vs off: mean {mean:.3f}/255"


CASES = {
    "omega0": dict(omega=0.0),
    "omega0.5": dict(omega=0.5),
    "te-lora-omega0.5": dict(omega=0.5, lora="te"),
    "second-lora-unselected": dict(omega=0.5, other=0.8, select=True),
    "batch2": dict(omega=0.4, batch_size=2),
    "sliced-qkv-lora-omega0.3": dict(omega=0.3, lora="sliced"),  # families whose LoRAs people share in that form
    "peft-lora-omega0.5": dict(omega=0.5, lora="peft"),
    "conv3d-lora-omega0.3": dict(omega=0.3, lora="conv3d"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(api, loaded_family, case):
    c = CASES[case]
    if c.get("lora") and c["lora"] not in EXTRA_LORAS[loaded_family]:
        pytest.skip(f"no {c['lora']} LoRA made for {loaded_family}")
    if c.get("batch_size", 1) > 1 and loaded_family in ONE_IMAGE_PER_JOB:
        pytest.skip(f"{loaded_family}: Neo's batch slider sets the frame count for this family, one image per job")
    lora = EXTRA_LORAS[loaded_family][c["lora"]] if c.get("lora") else None
    prompt = _prompt(loaded_family, lora=lora, other=c.get("other"))
    base = _request(prompt, batch_size=c.get("batch_size", 1))
    selection = (lora or wc.FAMILY_LORAS[loaded_family][0]) if c.get("select") else ""
    off = api.txt2img(base)
    pg = api.txt2img(wc.with_pg(base, wc.pg_args(omega=c["omega"], loras=selection)))
    ref = api.txt2img(wc.with_ref(base, c["omega"], loras=selection))
    assert "PG note" not in pg["infotexts"][0], pg["infotexts"][0]
    assert len(pg["images"]) == c.get("batch_size", 1)
    for i, (p, r, o) in enumerate(zip(pg["images"], ref["images"], off["images"])):
        assert_matches(p, r, o, f"{loaded_family} {case} image {i}")


def test_norm_lora_matches_the_reference(api, loaded_family):
    """A LoRA with entries on the DiT's RMSNorms: PG corrects RMSNorm exactly since dit-layers (before, the pass
    ran as plain CFG with a note naming the layer type), so PG runs — no `PG note` — and equals the reference."""
    extra = EXTRA_LORAS[loaded_family]
    base = _request(_prompt(loaded_family, lora=extra["norm"]))
    off = api.txt2img(base)["pixels"]
    pg = api.txt2img(wc.with_pg(base, wc.pg_args(omega=0.0)))
    text = pg["infotexts"][0]
    assert "PG note" not in text, f"PG did not run on the {extra['norm_type']} LoRA: {text}"
    ref = api.txt2img(wc.with_ref(base, 0.0))["pixels"]
    assert_matches(pg["pixels"], ref, off, f"{loaded_family} norm LoRA ω=0")


def test_model_output_unchanged_after_pg(api, off_image, loaded_family):
    """After PG jobs (and the reference's), the plain LoRA image is the one made before any of them."""
    api.txt2img(wc.with_pg(_request(_prompt(loaded_family)), wc.pg_args(omega=0.3)))
    after = api.txt2img(_request(_prompt(loaded_family)))["pixels"]
    mx, mean = wc.diff(after, off_image)
    assert mx == 0, f"PG-off image changed after a PG job: max {mx}/255 mean {mean:.3f}/255"
