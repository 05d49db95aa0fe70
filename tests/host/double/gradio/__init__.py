"""Double of gradio 3.41 as scripts' ui() uses it: components keep `value`; layout blocks are `with` blocks;
`update(**kw)` returns a dict marked as an update."""


class Component:
    def __init__(self, *args, value=None, **kwargs):
        self.value, self.kwargs = value, kwargs
        self.label, self.elem_id = kwargs.get("label"), kwargs.get("elem_id")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _component(name, positional=()):
    def init(self, *args, **kwargs):
        kwargs.update(zip(positional, args))
        Component.__init__(self, **kwargs)
    return type(name, (Component,), {"__init__": init})


Slider = _component("Slider", ("minimum", "maximum", "value"))
Radio = _component("Radio", ("choices",))
Dropdown = _component("Dropdown", ("choices",))
Textbox = _component("Textbox", ("value",))
Checkbox = _component("Checkbox", ("value",))
Button = _component("Button", ("value",))
HTML = _component("HTML", ("value",))
Row = Column = Group = Blocks = _component("Layout")


def update(**kwargs):
    return {"__type__": "update", **kwargs}
