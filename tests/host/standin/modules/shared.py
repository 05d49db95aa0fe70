"""Stand-in for modules/shared.py + shared_options.py (A1111 v1.10.1): opts, state, sd_model, cmd_opts.

`options_templates` IS `opts.data_labels` (as in the host's shared_init), so entries added to it at
import time (the Lora extension's way) exist before any UI is built. Only the host options the
stand-in reads are registered, with the host defaults.
"""
import sys

from modules import options, shared_cmd_options, shared_state
from modules.options import OptionInfo, options_section  # noqa: F401  (extensions use shared.OptionInfo / shared.options_section)

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

batch_cond_uncond = True  # old field, unused by the host too
parallel_processing_allowed = True
device = None
weight_load_location = None
sd_model = None
"""The loaded model; tests assign a modules.standin_model.StandinSdModel here."""

restricted_opts = set()
options_templates = {}
options_templates.update(options_section(('sd', "Stable Diffusion", "sd"), {
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
    "sd_checkpoints_limit": OptionInfo(1, "Maximum number of checkpoints loaded at the same time"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip", infotext="Clip skip"),
    "emphasis": OptionInfo("Original", "Emphasis mode", infotext="Emphasis"),
    "enable_quantization": OptionInfo(False, "Enable quantization in K samplers"),
    "randn_source": OptionInfo("GPU", "Random number generator source.", infotext="RNG"),
    "sdxl_crop_top": OptionInfo(0, "crop top coordinate"),
    "sdxl_crop_left": OptionInfo(0, "crop left coordinate"),
    "hires_fix_use_firstpass_conds": OptionInfo(False, "For hires fix, calculate conds of second pass using extra networks of first pass."),
    "disable_mmap_load_safetensors": OptionInfo(False, "Disable memmapping for loading .safetensors files."),
    "tiling": OptionInfo(False, "Tiling"),
    "face_restoration": OptionInfo(False, "Restore faces"),
    "face_restoration_model": OptionInfo("CodeFormer", "Face restoration model"),
    "inpainting_mask_weight": OptionInfo(1.0, "Inpainting conditioning mask strength"),
}))
options_templates.update(options_section(('optimizations', "Optimizations", "sd"), {
    "s_min_uncond": OptionInfo(0.0, "Negative Guidance minimum sigma", infotext='NGMS'),
    "s_min_uncond_all": OptionInfo(False, "Negative Guidance minimum sigma all steps", infotext='NGMS all steps'),
    "token_merging_ratio": OptionInfo(0.0, "Token merging ratio", infotext='Token merging ratio'),
    "token_merging_ratio_hr": OptionInfo(0.0, "Token merging ratio for high-res pass", infotext='Token merging ratio hr'),
    "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt", infotext='Pad conds'),
    "pad_cond_uncond_v0": OptionInfo(False, "Pad prompt/negative prompt (v0)", infotext='Pad conds v0'),
    "persistent_cond_cache": OptionInfo(True, "Persistent cond cache"),
    "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
    "fp8_storage": OptionInfo("Disable", "FP8 weight"),
    "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
}))
options_templates.update(options_section(('compatibility', "Compatibility", "sd"), {
    "use_old_scheduling": OptionInfo(False, "Use old prompt editing timelines.", infotext="Old prompt editing timelines"),
}))
options_templates.update(options_section(('sampler-params', "Sampler parameters", "sd"), {
    "eta_ancestral": OptionInfo(1.0, "Eta for k-diffusion samplers", infotext='Eta'),
    "s_churn": OptionInfo(0.0, "sigma churn"),
    "s_tmin": OptionInfo(0.0, "sigma tmin"),
    "s_tmax": OptionInfo(0.0, "sigma tmax"),
    "s_noise": OptionInfo(1.0, "sigma noise"),
    "eta_noise_seed_delta": OptionInfo(0, "Eta noise seed delta", infotext='ENSD'),
    "sgm_noise_multiplier": OptionInfo(False, "SGM noise multiplier", infotext="SGM noise multiplier"),
    "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling", infotext="Skip Early CFG"),
}))
options_templates.update(options_section(('infotext', "Infotext", "ui"), {
    "add_model_name_to_info": OptionInfo(True, "Add model name to infotext"),
    "add_model_hash_to_info": OptionInfo(True, "Add model hash to infotext"),
    "add_vae_name_to_info": OptionInfo(True, "Add VAE name to infotext"),
    "add_vae_hash_to_info": OptionInfo(True, "Add VAE hash to infotext"),
    "add_user_name_to_info": OptionInfo(False, "Add user name to infotext when authenticated"),
    "add_version_to_infotext": OptionInfo(True, "Add program version to infotext"),
    "infotext_skip_pasting": OptionInfo([], "Disregard fields from pasted infotext"),
    "infotext_styles": OptionInfo("Apply if any", "Infer styles from prompts of pasted infotext"),
}))
options_templates.update(options_section(('ui', "Live previews / grids", "ui"), {
    "live_preview_content": OptionInfo("Prompt", "Live preview subject"),
    "live_previews_enable": OptionInfo(False, "Show live previews of the created image"),
    "return_grid": OptionInfo(True, "Show grid in gallery"),
    "grid_save": OptionInfo(True, "Always save all generated image grids"),
    "img_max_size_mp": OptionInfo(200, "Maximum grid size (in megapixels)"),
    "samples_save": OptionInfo(False, "Always save all generated images"),
    "sd_vae_decode_method": OptionInfo("Full", "VAE type for decode"),
    "disabled_extensions": OptionInfo([], "Disable these extensions"),
    "disable_all_extensions": OptionInfo("none", "Disable all extensions"),
}))

opts = options.Options(options_templates, restricted_opts)
state = shared_state.State()


class _PromptStyles:
    """mirrors modules/styles.py:StyleDatabase for a database with no styles."""

    styles = {}

    def apply_styles_to_prompt(self, prompt, styles):
        return prompt

    def apply_negative_styles_to_prompt(self, prompt, styles):
        return prompt

    def extract_styles_from_prompt(self, prompt, negative_prompt):
        return [], prompt, negative_prompt


class _TotalTqdm:
    """mirrors modules/shared_total_tqdm.py:TotalTQDM (no output)."""

    def reset(self):
        pass

    def update(self):
        pass

    def updateTotal(self, new_total):
        pass

    def clear(self):
        pass


prompt_styles = _PromptStyles()
total_tqdm = _TotalTqdm()
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {"Latent": {"mode": "bilinear", "antialias": False}}
sd_upscalers = []
hf_endpoint = "https://huggingface.co"
progress_print_out = sys.stdout
