"""What PG relies on from A1111 v1.10.1, as data. The double (this folder) is built on these tables and
tests/webui/test_host_contract.py checks each of them against the real WebUI.

Facts only (names, orders, layouts); nothing here is host code.
"""

# Attributes of the object handed to on_cfg_denoiser callbacks, all set by the host.
CFG_DENOISER_PARAMS = ("x", "image_cond", "sigma", "sampling_step", "total_sampling_steps", "text_cond",
                       "text_uncond", "denoiser")
# ... of the object handed to on_cfg_denoised callbacks (its `x` is modified in place, never reassigned).
CFG_DENOISED_PARAMS = ("x", "sampling_step", "total_sampling_steps", "inner_model")
# Which value `sampling_step` has at each denoiser call of an n-step Euler run: the progress counter is
# advanced after each step's model call, so steps 0 and 1 both read 0; `total_sampling_steps` is n.
def sampling_steps_seen(n):
    return [0] + list(range(n - 1))


# Script hooks the double runs, in the host's order for a txt2img job with hires fix (the real host
# runs more hooks in between; this order is a subsequence of the real one).
HOOK_ORDER = ("before_process", "process", "before_process_batch", "process_batch",
              "process_before_every_sampling", "before_hr", "process_before_every_sampling", "postprocess_batch",
              "postprocess")
# Keyword arguments of process_before_every_sampling.
BEFORE_SAMPLING_KWARGS = ("c", "noise", "uc", "x")

# Processing-object fields PG reads (txt2img), present when the script's hooks run.
P_FIELDS = ("prompt", "negative_prompt", "negative_prompts", "hr_negative_prompts", "width", "height", "steps",
            "firstpass_steps", "sampler_name", "hr_sampler_name", "hr_second_pass_steps", "hr_upscale_to_x",
            "hr_upscale_to_y", "is_hr_pass", "extra_generation_params", "is_api", "scripts", "script_args",
            "sample", "batch_size", "n_iter", "enable_hr", "cfg_scale", "seed", "cached_params", "extra_network_data",
            "hr_extra_network_data")

# The built-in Lora extension's objects.
NETWORK_ATTRS = ("name", "mentioned_name", "network_on_disk", "te_multiplier", "unet_multiplier", "dyn_dim",
                 "modules")
NETWORK_ON_DISK_ATTRS = ("name", "alias", "filename")
LORA_MODULE_ATTRS = ("network", "sd_key", "sd_module", "up_model", "down_model", "mid_model", "alpha", "dim",
                     "scale", "bias", "dora_scale", "multiplier", "calc_scale", "calc_updown")
# Layer attributes the extension sets once it merged a network into a layer in place.
LAYER_ATTRS = ("network_layer_name", "network_weights_backup", "network_bias_backup", "network_current_names")
# Network layer names: the module path with "." replaced by "_"; UNet layers start like this one.
UNET_LAYER_PREFIX = "diffusion_model_"

# Row layouts the UNet sees, one string per UNet call: C = a text_cond row, U = a text_uncond row, B = both
# (prompt == negative prompt). Case -> (job, options, prompts per image or None, step, layouts at that step).
# Both sides run the same jobs (2 steps, no LoRA); LONG is over one text chunk on both sides.
LONG = " ".join(["cat"] * 80)
LAYOUT_CASES = {
    "plain batch 2": (dict(batch_size=2, prompt="a cat", negative_prompt="blurry"), {}, None, 0, ["CCUU"]),
    "batch 2 + AND": (dict(batch_size=2, prompt="a cat AND a hat:0.5", negative_prompt="blurry"), {}, None, 0,
                      ["CCCCUU"]),
    "uneven AND, batch_cond_uncond off": (dict(batch_size=2, prompt="a cat", negative_prompt="blurry"),
                                          dict(batch_cond_uncond=False), ["a cat AND a hat", "a dog"], 0,
                                          ["CC", "CU", "U"]),
    "unequal lengths": (dict(batch_size=2, prompt=LONG, negative_prompt="blurry"), {}, None, 0, ["CC", "UU"]),
    "unequal lengths, padded": (dict(batch_size=2, prompt=LONG, negative_prompt="blurry"),
                                dict(pad_cond_uncond=True), None, 0, ["CCUU"]),
    "prompt == negative": (dict(batch_size=1, prompt="blurry", negative_prompt="blurry"), {}, None, 0, ["BB"]),
    "NGMS odd step": (dict(batch_size=2, prompt="a cat", negative_prompt="blurry", s_min_uncond=100.0), {},
                      None, 1, ["CC"]),
    "skip early CFG": (dict(batch_size=2, prompt="a cat", negative_prompt="blurry"), dict(skip_early_cond=0.4), None,
                       0, ["CC"]),
}

# X/Y/Z: AxisOption(label, type, apply, format_value=..., confirm=None, cost=0.0, choices=None, prepare=None);
# a cell is copy(p) (its extra_generation_params dict is shared with p), then apply(pc, value, values).
AXIS_OPTION_PARAMS = ("label", "type", "apply", "format_value", "confirm", "cost", "choices", "prepare")

# Settings: OptionInfo(default, label, component, component_args, ...) with .info() and .needs_reload_ui().
OPTION_INFO_PARAMS = ("default", "label", "component", "component_args")

# SDXL (`sd_model.is_sdxl`; the double's model: tiny_sdxl.TinySDXL). The conditioning is a dict: the
# text_cond / text_uncond that on_cfg_denoiser sees have these keys ("crossattn" [N, T, C], "vector" [N, D]),
# are DictWithShape (`.shape` is the crossattn's: token counts are compared on it) and, like tensor
# conditioning, R cond rows and B uncond rows.
SDXL_COND_KEYS = ("crossattn", "vector")
SDXL_COND_TYPE = "DictWithShape"
# Keys of the `cond` dict the model's apply_model gets: the conditioning's own keys plus the denoiser's
# "c_concat" (batch_cond_uncond on or off, in every call).
SDXL_MODEL_COND_KEYS = ("c_concat", "crossattn", "vector")
# How the UNet gets them: keyword -> conditioning key; `y` has one row per row of x.
SDXL_UNET_KWARGS = {"context": "crossattn", "y": "vector"}
# Lora layer-name prefixes of the two text encoders (embedder index + module path under `.wrapped`); both
# follow te_multiplier ("transformer" within the first 20 characters).
SDXL_TE_LAYER_PREFIXES = ("0_transformer_", "1_model_transformer_")
# An all-empty negative prompt: these parts of text_uncond are all zero (the text encoders' outputs are
# forced to zero; the pooled text part of "vector" comes first, the size embeddings after it stay).
SDXL_EMPTY_NEGATIVE_ZERO = ("crossattn", "vector[:pooled]")
# The layouts of these LAYOUT_CASES hold unchanged on SDXL (rows told apart by their crossattn).
SDXL_LAYOUT_CASES = ("plain batch 2", "batch 2 + AND", "uneven AND, batch_cond_uncond off", "unequal lengths",
                     "unequal lengths, padded", "prompt == negative")
