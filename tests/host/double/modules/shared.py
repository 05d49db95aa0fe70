"""Global host state: `opts` (settings), `state` (progress/interrupt), `cmd_opts`, `sd_model`.

Claims: reading an option that was never registered raises AttributeError; `add_option` registers a
default that reads back at once; OptionInfo's `.info()` and `.needs_reload_ui()` return the OptionInfo.
"""
import types


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section, self.comment = onchange, section, ""

    def info(self, text):
        self.comment = text
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self, defaults):
        object.__setattr__(self, "data_labels", {k: OptionInfo(v) for k, v in defaults.items()})
        object.__setattr__(self, "data", dict(defaults))

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        self.data[key] = value


DEFAULT_OPTIONS = dict(batch_cond_uncond=True, pad_cond_uncond=False, skip_early_cond=0.0, s_min_uncond_all=False,
                       use_old_scheduling=False, lora_functional=False, sd_checkpoints_limit=1,
                       persistent_cond_cache=True)
opts = Options(DEFAULT_OPTIONS)
state = types.SimpleNamespace(interrupted=False, skipped=False, sampling_step=0, sampling_steps=0)
cmd_opts = types.SimpleNamespace(lowvram=False, medvram=False, ckpt_dir=None)
sd_model = None
