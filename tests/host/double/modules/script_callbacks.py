"""Callbacks. Claims: callbacks of a kind run in the order they were added; an exception in one is
reported (kept in `reported`) and the others still run, so it never reaches the job; the params objects
carry the attributes listed in contract.py."""
import collections

from contract import CFG_DENOISED_PARAMS, CFG_DENOISER_PARAMS

_callbacks = collections.defaultdict(list)
reported = []  # (callback kind, exception)


class _Params:
    FIELDS = ()

    def __init__(self, *values):
        for name, value in zip(self.FIELDS, values):
            setattr(self, name, value)


class CFGDenoiserParams(_Params):
    FIELDS = CFG_DENOISER_PARAMS


class CFGDenoisedParams(_Params):
    FIELDS = CFG_DENOISED_PARAMS


def _run(kind, *args):
    for fn in list(_callbacks[kind]):
        try:
            fn(*args)
        except Exception as e:
            reported.append((kind, e))


def _adder(kind):
    def add(fn, *, name=None):
        _callbacks[kind].append(fn)
    return add


KINDS = ("cfg_denoiser", "cfg_denoised", "model_loaded", "before_ui", "ui_settings", "script_unloaded")
on_cfg_denoiser, on_cfg_denoised, on_model_loaded, on_before_ui, on_ui_settings, on_script_unloaded = map(_adder, KINDS)


def _trigger(kind):
    return lambda *args: _run(kind, *args)


(cfg_denoiser_callback, cfg_denoised_callback, model_loaded_callback, before_ui_callback, ui_settings_callback,
 script_unloaded_callback) = map(_trigger, KINDS)


def remove_callbacks_for_function(fn):
    for callbacks in _callbacks.values():
        while fn in callbacks:
            callbacks.remove(fn)


def clear_callbacks():
    _callbacks.clear()
    reported.clear()
