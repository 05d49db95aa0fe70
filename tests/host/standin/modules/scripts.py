"""Stand-in for modules/scripts.py (A1111 v1.10.1): Script base class, script loading and the ScriptRunner.

Hook dispatch follows the host: only AlwaysVisible scripts whose class overrides the hook take part,
in load order; each call gets `p.script_args[args_from:args_to]`; exceptions are reported through
modules.errors and the next script runs (setup/before_process/process/... never raise to the caller).
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr

from modules import errors, paths, script_callbacks, script_loading, shared

AlwaysVisible = object()


class MaskBlendArgs:
    """mirrors scripts.MaskBlendArgs."""

    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    """mirrors scripts.PostSampleArgs (post_sample may replace .samples)."""

    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class OnComponent:
    component: object


class Script:
    """mirrors scripts.Script — same attributes and hook signatures; every hook is a no-op by default."""

    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        """mirrors Script.elem_id — 'script_[txt2img_|img2img_]<sanitized title>_<item_id>'."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = 'img2img' if self.is_img2img else 'txt2img'
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r'[^a-z_0-9]', '', re.sub(r'\s', '_', self.title().lower()))
        return f'script_{tabname}{title}_{item_id}'

    def before_hr(self, p, *args):
        pass


class ScriptBuiltinUI(Script):
    """mirrors scripts.ScriptBuiltinUI."""

    setup_for_ui_only = True

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabname = ('img2img' if self.is_img2img else 'txt2img') + "_" if need_tabname else ""
        return f'{tabname}{item_id}'

    def show(self, is_img2img):
        return AlwaysVisible


current_basedir = paths.script_path


def basedir():
    """mirrors scripts.basedir — the extension dir while its script file executes, else the webui root."""
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
scripts_data = []
postprocessing_scripts_data = []
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


def load_scripts(script_files=()):
    """mirrors scripts.load_scripts for an explicit list of ScriptFile (or paths; basedir = parent of scripts/).

    Clears scripts_data and all callbacks, executes each file with its basedir temporarily first on
    sys.path and as basedir(), registers every Script subclass found in the module namespace
    (including imported ones, like the host), then creates fresh scripts_txt2img/scripts_img2img runners.
    """
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for scriptfile in script_files:
        if isinstance(scriptfile, str):
            scriptfile = ScriptFile(os.path.dirname(os.path.dirname(os.path.abspath(scriptfile))), os.path.basename(scriptfile), os.path.abspath(scriptfile))
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            module = script_loading.load_module(scriptfile.path)
            for script_class in module.__dict__.values():
                if inspect.isclass(script_class) and issubclass(script_class, Script):
                    scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    """mirrors scripts.wrap_call."""
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


class ScriptRunner:
    """mirrors scripts.ScriptRunner: holds the scripts of one tab, assigns arg slices, dispatches hooks."""

    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.title_map = {}
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]
        self.callback_map = {}

    def initialize_scripts(self, is_img2img):
        """mirrors ScriptRunner.initialize_scripts — instantiates every class of scripts_data for this tab."""
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            self._add(script, script_data.path, is_img2img)
        self.callback_map.clear()

    def add_script(self, script, is_img2img=False, filename=None):
        """Stand-in helper: adds an already built Script instance as initialize_scripts would."""
        self._add(script, filename or inspect.getfile(type(script)), is_img2img)
        self.callback_map.clear()
        return script

    def _add(self, script, filename, is_img2img):
        script.filename = filename
        script.is_txt2img = not is_img2img
        script.is_img2img = is_img2img
        script.tabname = "img2img" if is_img2img else "txt2img"
        visibility = script.show(script.is_img2img)
        if visibility == AlwaysVisible:
            self.scripts.append(script)
            self.alwayson_scripts.append(script)
            script.alwayson = True
        elif visibility:
            self.scripts.append(script)
            self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        """mirrors ScriptRunner.create_script_ui — args_from/args_to are positions in self.inputs."""
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    def create_script_ui_inner(self, script):
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename)
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        if scriptlist is None:
            scriptlist = self.alwayson_scripts
        for script in scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        """mirrors ScriptRunner.setup_ui (section None only): alwayson UIs, then the Script dropdown, then selectable UIs."""
        all_titles = [wrap_call(script.title, script.filename, "title") or script.filename for script in self.scripts]
        self.title_map = {title.lower(): script for title, script in zip(all_titles, self.scripts)}
        self.titles = [wrap_call(script.title, script.filename, "title") or f"{script.filename} [error]" for script in self.selectable_scripts]
        self.setup_ui_for_section(None)
        dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=["None"] + self.titles, value="None", type="index")
        self.inputs[0] = dropdown
        self.setup_ui_for_section(None, self.selectable_scripts)
        return self.inputs

    def default_script_args(self):
        """Stand-in helper mirroring api.py:init_default_script_args — [0] = 0, then each control's constructor value."""
        last_arg_index = max([1] + [s.args_to for s in self.scripts if s.args_to is not None])
        args = [None] * last_arg_index
        args[0] = 0
        for script in self.scripts:
            if script.controls:
                for i, control in enumerate(script.controls):
                    args[script.args_from + i] = control.value
        return args

    def run(self, p, *args):
        """mirrors ScriptRunner.run — runs the selected (non-alwayson) script; NOT wrapped in try/except."""
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def list_scripts_for_method(self, method_name):
        return self.scripts if method_name in ('before_component', 'after_component') else self.alwayson_scripts

    def ordered_scripts(self, method_name):
        """mirrors ScriptRunner.ordered_scripts — scripts whose class overrides the method, in load order."""
        script_list = self.list_scripts_for_method(method_name)
        return [s for s in script_list if getattr(s.__class__, method_name, None) != getattr(Script, method_name, None)]

    def _call(self, method_name, p, *lead, **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *lead, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call('before_process', p)

    def process(self, p):
        self._call('process', p)

    def process_before_every_sampling(self, p, **kwargs):
        self._call('process_before_every_sampling', p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._call('before_process_batch', p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._call('after_extra_networks_activate', p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call('process_batch', p, **kwargs)

    def postprocess(self, p, processed):
        self._call('postprocess', p, processed)

    def postprocess_batch(self, p, images, **kwargs):
        self._call('postprocess_batch', p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._call('postprocess_batch_list', p, pp, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs):
        self._call('post_sample', p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs):
        self._call('on_mask_blend', p, mba)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._call('postprocess_image', p, pp)

    def before_hr(self, p):
        self._call('before_hr', p)

    def setup_scrips(self, p, *, is_ui=True):
        """mirrors ScriptRunner.setup_scrips (sic) — skips setup_for_ui_only scripts for API requests."""
        for script in self.ordered_scripts('setup'):
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def script(self, title):
        return self.title_map.get(title.lower())


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None
scripts_current: ScriptRunner = None
