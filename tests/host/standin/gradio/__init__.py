"""Tiny stand-in for gradio 3.41 (the version A1111 v1.10.1 ships): components keep their kwargs and `.value`.

Only what an extension's ui() touches: constructors, layout context managers, event registration
(no-ops that record the handler) and gr.update(). Nothing renders.
"""
__version__ = "3.41.2-standin"


class _Block:
    """Base of every stand-in component/layout: stores kwargs, supports `with` and event registration."""

    def __init__(self, value=None, **kwargs):
        self.value = value() if callable(value) else value
        self.kwargs = dict(kwargs)
        self.label = kwargs.get("label")
        self.elem_id = kwargs.get("elem_id")
        self.elem_classes = kwargs.get("elem_classes")
        self.visible = kwargs.get("visible", True)
        self.interactive = kwargs.get("interactive")
        for key in ("minimum", "maximum", "step", "choices", "info", "type", "precision", "open"):
            if key in kwargs:
                setattr(self, key, kwargs[key])
        self.events = []
        self.parent = _Block._context[-1] if _Block._context else None
        if self.parent is not None:
            self.parent.children.append(self)
        self.children = []

    _context = []

    def __enter__(self):
        _Block._context.append(self)
        return self

    def __exit__(self, *exc):
        _Block._context.pop()
        return False

    def _event(self, name):
        def register(fn=None, inputs=None, outputs=None, **kwargs):
            self.events.append((name, fn, inputs, outputs, kwargs))
            return self
        return register

    def __getattr__(self, item):
        if item in ("change", "click", "input", "select", "release", "submit", "blur", "focus", "upload", "then", "load"):
            return self._event(item)
        raise AttributeError(item)

    def get_config(self):
        return {"value": self.value, **self.kwargs}

    @staticmethod
    def update(**kwargs):
        return update(**kwargs)

    def __repr__(self):
        return f"{type(self).__name__}(label={self.label!r}, value={self.value!r})"


class Slider(_Block):
    def __init__(self, minimum=0, maximum=100, value=None, step=None, **kwargs):
        super().__init__(value=minimum if value is None else value, minimum=minimum, maximum=maximum, step=step, **kwargs)


class Checkbox(_Block):
    def __init__(self, value=False, **kwargs):
        super().__init__(value=value, **kwargs)


class Dropdown(_Block):
    def __init__(self, choices=None, value=None, type="value", multiselect=None, **kwargs):
        super().__init__(value=value, choices=list(choices or []), type=type, **kwargs)
        self.multiselect = multiselect


class Radio(_Block):
    def __init__(self, choices=None, value=None, type="value", **kwargs):
        super().__init__(value=value, choices=list(choices or []), type=type, **kwargs)


class CheckboxGroup(_Block):
    def __init__(self, choices=None, value=None, type="value", **kwargs):
        super().__init__(value=list(value or []), choices=list(choices or []), type=type, **kwargs)


class Textbox(_Block):
    def __init__(self, value="", **kwargs):
        super().__init__(value=value, **kwargs)


class Number(_Block):
    def __init__(self, value=None, **kwargs):
        super().__init__(value=value, **kwargs)


class Button(_Block):
    def __init__(self, value="Run", **kwargs):
        super().__init__(value=value, **kwargs)


class HTML(_Block):
    def __init__(self, value="", **kwargs):
        super().__init__(value=value, **kwargs)


class Markdown(_Block):
    def __init__(self, value="", **kwargs):
        super().__init__(value=value, **kwargs)


class State(_Block):
    def __init__(self, value=None, **kwargs):
        super().__init__(value=value, **kwargs)


class Row(_Block):
    pass


class Column(_Block):
    pass


class Group(_Block):
    pass


Box = Group


class Accordion(_Block):
    def __init__(self, label=None, open=True, **kwargs):
        super().__init__(label=label, open=open, **kwargs)


class Tab(_Block):
    def __init__(self, label=None, **kwargs):
        super().__init__(label=label, **kwargs)


TabItem = Tab


class Tabs(_Block):
    pass


class Blocks(_Block):
    def __init__(self, *args, **kwargs):
        super().__init__(**kwargs)
        self.parent = None


def update(**kwargs):
    """mirrors gradio 3.41 gr.update(): a dict tagged with __type__ = 'update'."""
    kwargs["__type__"] = "update"
    return kwargs


class Error(Exception):
    pass


warnings_shown = []


def Warning(message=""):  # noqa: N802  (gradio's name)
    warnings_shown.append(message)


def Info(message=""):  # noqa: N802
    warnings_shown.append(message)
