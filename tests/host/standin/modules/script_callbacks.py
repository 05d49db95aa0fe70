"""Stand-in for modules/script_callbacks.py (A1111 v1.10.1): callback registry, params classes and dispatchers.

Dispatchers catch every exception, report it through modules.errors and go on with the next callback,
like the host. Ordering is registration order (the host additionally applies metadata.ini and
user ordering, which tests do not need); the ordered-list cache and its length check are kept.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from modules import errors


def report_exception(c, job):
    """mirrors script_callbacks.report_exception."""
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


class ImageSaveParams:
    """mirrors script_callbacks.ImageSaveParams."""

    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


class ExtraNoiseParams:
    """mirrors script_callbacks.ExtraNoiseParams."""

    def __init__(self, noise, x, xi):
        self.noise = noise
        self.x = x
        self.xi = xi


class CFGDenoiserParams:
    """mirrors script_callbacks.CFGDenoiserParams (x, image_cond, sigma, text_cond, text_uncond are read back by the host)."""

    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    """mirrors script_callbacks.CFGDenoisedParams (the host does NOT read x back: in-place edits only)."""

    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    """mirrors script_callbacks.AfterCFGCallbackParams (x is read back)."""

    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


@dataclasses.dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list
    is_positive: bool = True


@dataclasses.dataclass
class ScriptCallback:
    """mirrors script_callbacks.ScriptCallback(script=<registering file>, callback, name)."""

    script: str
    callback: Any
    name: str = "unnamed"


def _extension_name(filename):
    # The host looks the file up in extensions.extensions; here: "<dir>/scripts/x.py" → "<dir>", else "base".
    parts = os.path.normpath(filename).split(os.sep)
    if len(parts) >= 3 and parts[-2] == "scripts":
        return parts[-3].lower()
    return "base"


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    """mirrors script_callbacks.add_callback — names are '<ext>/<file>/<category>[/<name>]', made unique."""
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    callback_name = f"{_extension_name(filename)}/{os.path.basename(filename)}/{category}"
    if name is not None:
        callback_name += f'/{name}'
    unique_callback_name = callback_name
    for index in range(1000):
        if not any(x.name == unique_callback_name for x in callbacks):
            break
        unique_callback_name = f'{callback_name}-{index + 1}'
    callbacks.append(ScriptCallback(filename, fun, unique_callback_name))


def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    """mirrors script_callbacks.sort_callbacks with no metadata ordering; honours opts.prioritized_callbacks_<category>."""
    callbacks = unordered_callbacks.copy()
    if enable_user_sort:
        from modules import shared
        for name in reversed(getattr(shared.opts, 'prioritized_callbacks_' + category, None) or []):
            index = next((i for i, callback in enumerate(callbacks) if callback.name == name), None)
            if index is not None:
                callbacks.insert(0, callbacks.pop(index))
    return callbacks


def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    """mirrors script_callbacks.ordered_callbacks (cache reused while its length matches)."""
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get('callbacks_' + category, [])
    if not enable_user_sort:
        return sort_callbacks(category, unordered_callbacks, enable_user_sort=False)
    callbacks = ordered_callbacks_map.get(category)
    if callbacks is not None and len(callbacks) == len(unordered_callbacks):
        return callbacks
    callbacks = sort_callbacks(category, unordered_callbacks)
    ordered_callbacks_map[category] = callbacks
    return callbacks


def enumerate_callbacks():
    for category, callbacks in callback_map.items():
        if category.startswith('callbacks_'):
            category = category[10:]
        yield category, callbacks


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_image_saved=[],
    callbacks_image_saved=[],
    callbacks_extra_noise=[],
    callbacks_cfg_denoiser=[],
    callbacks_cfg_denoised=[],
    callbacks_cfg_after_cfg=[],
    callbacks_before_component=[],
    callbacks_after_component=[],
    callbacks_image_grid=[],
    callbacks_infotext_pasted=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
    callbacks_list_optimizers=[],
    callbacks_list_unets=[],
    callbacks_before_token_counter=[],
)

ordered_callbacks_map = {}


def clear_callbacks():
    """mirrors script_callbacks.clear_callbacks (called by the host's load_scripts)."""
    for callback_list in callback_map.values():
        callback_list.clear()
    ordered_callbacks_map.clear()


def _dispatch(category, job, *args, reverse=False):
    cbs = ordered_callbacks(category)
    for c in (reversed(cbs) if reverse else list(cbs)):
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, job)


def app_started_callback(demo, app):
    _dispatch('app_started', 'app_started_callback', demo, app)


def app_reload_callback():
    _dispatch('on_reload', 'callbacks_on_reload')


def model_loaded_callback(sd_model):
    _dispatch('model_loaded', 'model_loaded_callback', sd_model)


def ui_tabs_callback():
    res = []
    for c in ordered_callbacks('ui_tabs'):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, 'ui_tabs_callback')
    return res


def ui_train_tabs_callback(params: UiTrainTabParams):
    _dispatch('ui_train_tabs', 'callbacks_ui_train_tabs', params)


def ui_settings_callback():
    _dispatch('ui_settings', 'ui_settings_callback')


def before_image_saved_callback(params: ImageSaveParams):
    _dispatch('before_image_saved', 'before_image_saved_callback', params)


def image_saved_callback(params: ImageSaveParams):
    _dispatch('image_saved', 'image_saved_callback', params)


def extra_noise_callback(params: ExtraNoiseParams):
    _dispatch('extra_noise', 'callbacks_extra_noise', params)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    """mirrors script_callbacks.cfg_denoiser_callback."""
    _dispatch('cfg_denoiser', 'cfg_denoiser_callback', params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    """mirrors script_callbacks.cfg_denoised_callback."""
    _dispatch('cfg_denoised', 'cfg_denoised_callback', params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    """mirrors script_callbacks.cfg_after_cfg_callback."""
    _dispatch('cfg_after_cfg', 'cfg_after_cfg_callback', params)


def before_component_callback(component, **kwargs):
    for c in ordered_callbacks('before_component'):
        try:
            c.callback(component, **kwargs)
        except Exception:
            report_exception(c, 'before_component_callback')


def after_component_callback(component, **kwargs):
    for c in ordered_callbacks('after_component'):
        try:
            c.callback(component, **kwargs)
        except Exception:
            report_exception(c, 'after_component_callback')


def image_grid_callback(params: ImageGridLoopParams):
    _dispatch('image_grid', 'image_grid', params)


def infotext_pasted_callback(infotext: str, params: dict):
    """mirrors script_callbacks.infotext_pasted_callback."""
    _dispatch('infotext_pasted', 'infotext_pasted', infotext, params)


def script_unloaded_callback():
    """mirrors script_callbacks.script_unloaded_callback (reversed order)."""
    _dispatch('script_unloaded', 'script_unloaded', reverse=True)


def before_ui_callback():
    """mirrors script_callbacks.before_ui_callback (reversed order)."""
    _dispatch('before_ui', 'before_ui', reverse=True)


def list_optimizers_callback():
    res = []
    _dispatch('list_optimizers', 'list_optimizers', res)
    return res


def list_unets_callback():
    res = []
    _dispatch('list_unets', 'list_unets', res)
    return res


def before_token_counter_callback(params: BeforeTokenCounterParams):
    _dispatch('before_token_counter', 'before_token_counter', params)


def remove_current_script_callbacks():
    """mirrors script_callbacks.remove_current_script_callbacks — drops every callback registered from the caller's file."""
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else 'unknown file'
    if filename == 'unknown file':
        return
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        for cb in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(cb)


def remove_callbacks_for_function(callback_func):
    """mirrors script_callbacks.remove_callbacks_for_function — removes that function from every category."""
    for callback_list in list(callback_map.values()) + list(ordered_callbacks_map.values()):
        for cb in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(cb)


def _registrar(category):
    def register(callback, *, name=None):
        add_callback(callback_map['callbacks_' + category], callback, name=name, category=category)
    register.__name__ = "on_" + category
    register.__doc__ = f"mirrors script_callbacks.on_{category}(callback, *, name=None)."
    return register


on_app_started = _registrar('app_started')
on_before_reload = _registrar('on_reload')
on_model_loaded = _registrar('model_loaded')
on_ui_tabs = _registrar('ui_tabs')
on_ui_train_tabs = _registrar('ui_train_tabs')
on_ui_settings = _registrar('ui_settings')
on_before_image_saved = _registrar('before_image_saved')
on_image_saved = _registrar('image_saved')
on_extra_noise = _registrar('extra_noise')
on_cfg_denoiser = _registrar('cfg_denoiser')
on_cfg_denoised = _registrar('cfg_denoised')
on_cfg_after_cfg = _registrar('cfg_after_cfg')
on_before_component = _registrar('before_component')
on_after_component = _registrar('after_component')
on_image_grid = _registrar('image_grid')
on_infotext_pasted = _registrar('infotext_pasted')
on_script_unloaded = _registrar('script_unloaded')
on_before_ui = _registrar('before_ui')
on_list_optimizers = _registrar('list_optimizers')
on_list_unets = _registrar('list_unets')
on_before_token_counter = _registrar('before_token_counter')
