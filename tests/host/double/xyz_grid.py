"""Double of scripts/xyz_grid.py as PG uses it. Claims: `axis_options` is a list of AxisOption(label, type,
apply, format_value=..., confirm=None, cost=0.0, choices=None, prepare=None); before any cell, values are
converted with `type` and `confirm(p, values)` runs (an exception stops the grid); each cell is copy(p)
(so its extra_generation_params dict is p's), then apply(cell, value, values), then process_images(cell);
a cell that raises is reported and gives an empty result."""
import copy

from modules import processing, scripts


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare


def apply_field(field):
    return lambda p, x, xs: setattr(p, field, x)


axis_options = [AxisOption("Nothing", str, lambda p, x, xs: None), AxisOption("CFG Scale", float, apply_field("cfg_scale"))]


def run_grid(p, opt, values):
    values = [opt.type(v) for v in values]
    if opt.confirm:
        opt.confirm(p, values)
    results = []
    for value in values:
        cell = copy.copy(p)
        opt.apply(cell, value, values)
        try:
            results.append(processing.process_images(cell))
        except Exception as e:
            scripts.reported.append(("xyz cell", opt.label, e))
            results.append(processing.Processed(cell, [], []))
    return results


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        return []
