"""Live check of the host double's claims (tests/host/double/contract.py) against the real A1111 WebUI.

Needs tests/webui/contract_ext (the "PG contract probe" script) linked into the harness WebUI next to PG
and the reference extension; skipped without PG_WEBUI_URL or without the probe. Each test runs the same
job as the double-side test in tests/host/test_double.py and compares with the same table.
"""
import json
import os
import sys
import types

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(os.path.dirname(HERE), "host", "double")
if DOUBLE not in sys.path:
    sys.path.insert(0, DOUBLE)

import contract  # noqa: E402
import webui_client as wc  # noqa: E402

PROBE = "PG contract probe"
CONFIG = {"fields": list(contract.P_FIELDS), "network_attrs": list(contract.NETWORK_ATTRS),
          "on_disk_attrs": list(contract.NETWORK_ON_DISK_ATTRS), "module_attrs": list(contract.LORA_MODULE_ATTRS),
          "layer_attrs": list(contract.LAYER_ATTRS)}


@pytest.fixture(scope="module")
def client(webui_url):
    c = wc.Client(webui_url)
    if PROBE.lower() not in [s.lower() for s in c.get("/sdapi/v1/scripts")["txt2img"]]:
        pytest.skip("the contract probe tests/webui/contract_ext is not linked into the WebUI")
    return c


def probe_job(client, prompt="a cat", negative_prompt="blurry", options=None, steps=2, **extra):
    config = dict(CONFIG, **extra.pop("config", {}))
    payload = wc.base_request(prompt=prompt, steps=steps, **extra)
    payload["negative_prompt"] = negative_prompt
    payload["override_settings"].update(options or {})
    payload["alwayson_scripts"][PROBE] = {"args": [True, json.dumps(config)]}
    # the host restores only overridden options that were ever saved, so put back every one we changed
    saved = {k: v for k, v in client.get("/sdapi/v1/options").items() if k in payload["override_settings"]}
    try:
        res = client.txt2img(payload)
    finally:
        client.post("/sdapi/v1/options", saved)
    return res, client.get("/pg-contract/last")


@pytest.mark.parametrize("case", list(contract.LAYOUT_CASES))
def test_row_layouts(client, case):
    kw, options, prompts, step, expected = contract.LAYOUT_CASES[case]
    kw = dict(kw)
    _, last = probe_job(client, kw.pop("prompt"), kw.pop("negative_prompt"), options,
                        config={"prompts": prompts} if prompts else {}, **kw)
    assert last["steps"][step]["calls"] == expected, [s["calls"] for s in last["steps"]]


def test_denoiser_params_and_step_counter(client):
    _, last = probe_job(client, steps=4)
    steps = last["steps"]
    assert [s["params"] for s in steps] == [sorted(contract.CFG_DENOISER_PARAMS)] * 4
    assert [s["sampling_step"] for s in steps] == contract.sampling_steps_seen(4)
    assert {s["total_sampling_steps"] for s in steps} == {4}
    assert steps[0]["denoised_params"] == sorted(contract.CFG_DENOISED_PARAMS)


def test_hook_order_kwargs_p_fields_and_errors_reported(client):
    res, last = probe_job(client, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, denoising_strength=0.5,
                          hr_upscaler="Latent", config={"fail_in": "process"})
    assert len(res["images"]) == 1  # the hook's exception was reported, the job went on
    assert tuple(last["hooks"]) == contract.HOOK_ORDER
    assert last["before_sampling_kwargs"] == sorted(contract.BEFORE_SAMPLING_KWARGS)
    assert last["p_missing"] == []


def test_lora_objects_and_in_place_merge(client):
    _, last = probe_job(client, prompt="a cat <lora:rand_lora:0.7>")
    lora = last["lora"]
    assert lora["network_missing"] == lora["on_disk_missing"] == lora["module_missing"] == lora["layer_missing"] == []
    assert lora["unet_multiplier_ok"] and lora["te_multiplier_ok"] and lora["calc_scale_ok"]
    assert lora["calc_updown_err"] <= 1e-6 * max(lora["merge_scale"], 1.0)
    assert lora["merged_err"] <= 1e-5 and lora["merge_scale"] > 0
    assert lora["layer_name"].startswith(contract.UNET_LAYER_PREFIX)


def test_infotext_quoting_and_parsing(client):
    from modules import infotext_utils  # the double's
    res, _ = probe_job(client)
    text = res["infotexts"][0]
    assert 'PG probe quoted: "a, b: c"' in text and "PG probe bare," in text and "PG probe none" not in text
    params = infotext_utils.parse_generation_parameters(text)
    assert params["PG probe quoted"] == "a, b: c" and "PG probe bare" not in params
    assert params["Size-1"] == "64" and params["Prompt"] == "a cat" and params["Negative prompt"] == "blurry"
    assert infotext_utils.quote("a, b: c") == '"a, b: c"' and infotext_utils.quote(0.5) == 0.5


def test_refiner_is_loaded_into_the_same_model_object(client):
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models")]
    refiner = next(t for t in titles if t.startswith("rand_sd15_dreambooth"))
    _, last = probe_job(client, steps=4, refiner_checkpoint=refiner, refiner_switch_at=0.5,
                        options={"refiner_switch_by_sample_steps": True})
    steps = last["steps"]
    assert len({s["model"] for s in steps}) == 1  # same object, new weights
    name = refiner.split(" [")[0]  # the title gains "[hash]" once the host has hashed the file (at its load)
    assert [s["checkpoint"].split(" [")[0] == name for s in steps] == [False, False, True, True]
    assert last["model_loaded"] >= 1


def test_facts_without_a_job(client):
    from modules import sd_models  # the double's
    real = client.get("/sdapi/v1/sd-models")
    queries = ["", "rand", "rand_sd15", "sd15_dream", "nothing here", "rand_sd15.safetensors [0123456789]"]
    queries += [m["title"] for m in real] + [m["model_name"] for m in real]
    facts = client.post("/pg-contract/facts", {"queries": queries})
    assert facts["cfg_denoiser_params"] == list(contract.CFG_DENOISER_PARAMS)
    assert facts["option_info_params"][:4] == list(contract.OPTION_INFO_PARAMS) and facts["option_info_chain"]
    assert facts["unknown_option"] == "AttributeError"
    assert facts["xyz_module_name"] == "xyz_grid.py"
    assert facts["axis_option_params"] == list(contract.AXIS_OPTION_PARAMS)
    assert facts["lowvram_flag"] == {"medvram": True, "lowvram": True}
    sd_models.checkpoints_list.clear()
    sd_models.checkpoint_aliases.clear()
    for title, (name, extra, model_name, old_hash, short, sha, ids) in facts["checkpoints"].items():
        if short is None:  # not hashed yet (the host hashes a file when it first loads it): no hash ids
            ours = [old_hash, model_name, name, extra]
            assert title == name
        else:
            ours = [old_hash, model_name, title, name, extra, short, sha, f"{extra} [{short}]"]
            assert title == f"{name} [{short}]"
        assert set(ours) <= set(ids)
        info = types.SimpleNamespace(title=title)
        sd_models.checkpoints_list[title] = info
        sd_models.checkpoint_aliases.update(dict.fromkeys(ids, info))
    for query in queries:
        got = sd_models.get_closet_checkpoint_match(query)
        assert (got.title if got else None) == facts["matches"][query], query
