"""Stand-in for scripts/xyz_grid.py (A1111 v1.10.1): AxisOption classes, axis_options, helpers and the per-cell run logic.

The real file is loaded as a script module named "xyz_grid.py"; tests can register it with
`modules.scripts.load_scripts([path_of_this_file])` or import it directly. `run_grid` reproduces the
cell loop of Script.run: confirm every axis first, then per cell a shallow copy of p with the axes
applied and process_images(pc); cell exceptions are displayed and give an empty Processed.
"""
from copy import copy
from itertools import permutations

from modules import errors, processing, scripts, shared
from modules.processing import Processed, process_images


def apply_field(field):
    """mirrors xyz_grid.apply_field — setattr(p, field, x)."""
    def fun(p, x, xs):
        setattr(p, field, x)
    return fun


def apply_override(field, boolean: bool = False):
    """mirrors xyz_grid.apply_override — writes p.override_settings[field] (a dict SHARED by all cells)."""
    def fun(p, x, xs):
        if boolean:
            x = True if x.lower() == "true" else False
        p.override_settings[field] = x
    return fun


def confirm_range(min_val, max_val, axis_label):
    """mirrors xyz_grid.confirm_range."""
    def confirm_range_fun(p, xs):
        for x in xs:
            if not (max_val >= x >= min_val):
                raise ValueError(f'{axis_label} value "{x}" out of range [{min_val}, {max_val}]')
    return confirm_range_fun


def boolean_choice(reverse: bool = False):
    """mirrors xyz_grid.boolean_choice."""
    def choice():
        return ["False", "True"] if reverse else ["True", "False"]
    return choice


def format_value_add_label(p, opt, x):
    """mirrors xyz_grid.format_value_add_label."""
    if type(x) == float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if type(x) == float:
        x = round(x, 8)
    return x


def format_value_join_list(p, opt, x):
    return ", ".join(x)


def do_nothing(p, x, xs):
    pass


def format_nothing(p, opt, x):
    return ""


def format_remove_path(p, opt, x):
    import os
    return os.path.basename(x)


def str_permutations(x):
    return x


def list_to_csv_string(data_list):
    return ", ".join(str(x) for x in data_list)


def csv_string_to_list_strip(data_str):
    return [x.strip() for x in data_str.split(",") if x.strip()] if data_str else []


class AxisOption:
    """mirrors xyz_grid.AxisOption."""

    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionTxt2Img("Sampler", str, apply_field("sampler_name"), format_value=format_value),
    AxisOption("Negative Guidance minimum sigma", float, apply_field("s_min_uncond")),
    AxisOption("Clip skip", int, apply_override('CLIP_stop_at_last_layers')),
]


def run_grid(p, x_opt, xs, y_opt=None, ys=(None,), z_opt=None, zs=(None,)):
    """Cell loop of xyz_grid Script.run/draw_xyz_grid: values are typed with opt.type, opt.confirm(p, values) runs for each
    axis before anything is generated, then z outer, y, x inner (all costs equal); returns the list of per-cell Processed."""
    nothing = axis_options[0]
    y_opt = y_opt or nothing
    z_opt = z_opt or nothing

    def typed(opt, vals):
        if opt is nothing:
            return [0]
        vals = [opt.type(v) for v in vals] if opt.type is not str_permutations else list(permutations(vals))
        if opt.confirm:
            opt.confirm(p, vals)
        return vals

    xs, ys, zs = typed(x_opt, xs), typed(y_opt, ys), typed(z_opt, zs)
    results = []
    for iz, z in enumerate(zs):
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                if shared.state.interrupted or shared.state.stopping_generation:
                    results.append(Processed(p, [], p.seed, ""))
                    continue
                pc = copy(p)
                pc.styles = pc.styles[:]
                x_opt.apply(pc, x, xs)
                y_opt.apply(pc, y, ys)
                z_opt.apply(pc, z, zs)
                try:
                    res = process_images(pc)
                except Exception as e:
                    errors.display(e, "generating image for xyz plot")
                    res = Processed(p, [], p.seed, "")
                results.append(res)
    return results


class Script(scripts.Script):
    """Registers like the real X/Y/Z script (selectable, not alwayson)."""

    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) == AxisOption or x.is_img2img == is_img2img]
        return None

    def run(self, p, *args):
        return None


processing_module = processing  # keep the import visible for linters
