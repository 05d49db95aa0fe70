"""Helpers for tests that drive the stand-in host (not a host file).

    import standin_host
    sd_model = standin_host.reset_host(tmp_dir)          # fresh opts/state/callbacks/caches + a StandinSdModel
    runner = standin_host.make_runner(MyScript())        # ScriptRunner with the script alwayson, UI built
    p = standin_host.make_txt2img(runner, prompt="a cat <lora:style:0.8>", steps=4)
    processed = modules.processing.process_images(p)
"""
import os

import safetensors.torch

from modules import errors, extra_networks, processing, script_callbacks, scripts, sd_models, shared
from modules.standin_model import StandinSdModel

_default_labels = None
_default_data = None


def snapshot_options():
    """Remember the registered options and values as the baseline reset_host() returns to."""
    global _default_labels, _default_data
    _default_labels = dict(shared.opts.data_labels)
    _default_data = dict(shared.opts.data)


def reset_options():
    if _default_labels is None:
        snapshot_options()
    shared.opts.data_labels.clear()
    shared.opts.data_labels.update(_default_labels)
    for info in shared.opts.data_labels.values():
        info.onchange = None
    shared.opts.data = dict(_default_data)


def save_checkpoint(sd_model, path):
    """Write the model as an SD1-layout .safetensors checkpoint."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd_model.checkpoint_state_dict().items()}, path)
    return path


def reset_host(ckpt_dir=None, seed=0):
    """Fresh host state: options, State, callbacks, cond caches, errors, extra networks; a new StandinSdModel as shared.sd_model.

    With `ckpt_dir`, the model is saved there as base.safetensors, --ckpt-dir points there, list_models() ran
    and the model's sd_checkpoint_info is that CheckpointInfo.
    """
    reset_options()
    shared.state.__init__()
    for k in ("interrupted", "skipped", "stopping_generation"):
        setattr(shared.state, k, False)
    shared.state.sampling_step = shared.state.sampling_steps = 0
    script_callbacks.clear_callbacks()
    errors.exception_records.clear()
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
    scripts.scripts_data.clear()
    sd_model = StandinSdModel(seed=seed)
    shared.sd_model = sd_model
    sd_models.checkpoints_list.clear()
    sd_models.checkpoint_aliases.clear()
    shared.cmd_opts.ckpt_dir = None
    if ckpt_dir is not None:
        shared.cmd_opts.ckpt_dir = str(ckpt_dir)
        save_checkpoint(sd_model, os.path.join(str(ckpt_dir), "base.safetensors"))
        sd_models.list_models()
        info = sd_models.get_closet_checkpoint_match("base")
        sd_model.sd_checkpoint_info = info
        sd_model.sd_model_hash = info.shorthash
        sd_model.sd_model_checkpoint = info.filename
        shared.opts.data["sd_model_checkpoint"] = info.title
    return sd_model


def make_runner(*script_instances, is_img2img=False):
    """A ScriptRunner holding the given Script instances (in order), with setup_ui() run so args_from/args_to are set."""
    runner = scripts.ScriptRunner()
    for s in script_instances:
        runner.add_script(s, is_img2img=is_img2img)
    runner.prepare_ui()
    runner.setup_ui()
    return runner


def make_txt2img(runner=None, script_args=None, **kwargs):
    """A StableDiffusionProcessingTxt2Img with small defaults (64x64 → 8x8 latents, 4 Euler steps, seed 1).

    script_args default to runner.default_script_args() (the API's defaults); assigning them runs Script.setup.
    """
    defaults = dict(prompt="a photo of a cat", negative_prompt="", width=64, height=64, steps=4, cfg_scale=5.0,
                    sampler_name="Euler", seed=1, subseed=1, batch_size=1, n_iter=1)
    defaults.update(kwargs)
    p = processing.StableDiffusionProcessingTxt2Img(**defaults)
    if runner is not None:
        p.scripts = runner
        p.script_args = tuple(script_args if script_args is not None else runner.default_script_args())
    return p
