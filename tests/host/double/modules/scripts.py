"""Scripts and the script runner.

Claims: a script file is loaded as a module named after its file ("xyz_grid.py"), and each Script subclass in
it is listed in `scripts_data` (script_class, path, basedir, module). The runner's argument list starts with
the selected-script index; each AlwaysVisible script's ui() controls follow in order and its hooks get
p.script_args[args_from:args_to]; API defaults are the controls' values. A hook that raises is reported
(kept in `reported`) and the job goes on.
"""
import collections
import importlib.util
import os
import re

AlwaysVisible = object()
ScriptClassData = collections.namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
reported = []  # (hook, script title, exception)
HOOKS = ("before_process", "process", "before_process_batch", "process_batch", "process_before_every_sampling",
         "before_hr", "postprocess_batch", "postprocess")


class Script:
    args_from = args_to = None
    is_txt2img, is_img2img = True, False
    infotext_fields = paste_field_names = None

    def elem_id(self, item_id):
        return re.sub(r"[^a-z_0-9]", "", f"script_txt2img_{self.title()}_{item_id}".lower().replace(" ", "_"))

    def show(self, is_img2img):
        return True


for _hook in HOOKS:
    setattr(Script, _hook, lambda self, p, *args, **kwargs: None)


def load_scripts(paths):
    scripts_data.clear()
    for path in paths:
        spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script:
                scripts_data.append(ScriptClassData(obj, path, os.path.dirname(path), module))


class ScriptRunner:
    def __init__(self, *instances):
        self.alwayson_scripts = list(instances)
        self.inputs = [None]

    def initialize_scripts(self, is_img2img=False):
        for data in scripts_data:
            script = data.script_class()
            if script.show(is_img2img) is AlwaysVisible:
                self.alwayson_scripts.append(script)

    def setup_ui(self):
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            self.inputs += list(script.ui(False) or [])
            script.args_to = len(self.inputs)
        return self

    def default_script_args(self):
        return [0] + [c.value for c in self.inputs[1:]]

    def _call(self, hook, p, *before, **kwargs):
        for script in self.alwayson_scripts:
            try:
                getattr(script, hook)(p, *before, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception as e:
                reported.append((hook, script.title(), e))


def _runner_hook(hook):
    if hook == "postprocess_batch":
        return lambda self, p, images, **kwargs: self._call(hook, p, images=images, **kwargs)
    return lambda self, p, *before, **kwargs: self._call(hook, p, *before, **kwargs)


for _hook in HOOKS:
    setattr(ScriptRunner, _hook, _runner_hook(_hook))
