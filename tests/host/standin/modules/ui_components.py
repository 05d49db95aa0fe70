"""Stand-in for modules/ui_components.py (A1111 v1.10.1): InputAccordion and small form helpers on the gradio stand-in."""
import gradio as gr


class FormComponent:
    def get_expected_parent(self):
        return gr.components.Form if hasattr(gr, "components") else None


class ToolButton(gr.Button):
    """mirrors ui_components.ToolButton."""


class FormRow(gr.Row):
    """mirrors ui_components.FormRow."""


class FormColumn(gr.Column):
    """mirrors ui_components.FormColumn."""


class FormGroup(gr.Group):
    """mirrors ui_components.FormGroup."""


class FormHTML(gr.HTML):
    """mirrors ui_components.FormHTML."""


class DropdownMulti(gr.Dropdown):
    """mirrors ui_components.DropdownMulti (multiselect dropdown)."""

    def __init__(self, **kwargs):
        super().__init__(multiselect=True, **kwargs)


class InputAccordion(gr.Checkbox):
    """mirrors ui_components.InputAccordion — a hidden checkbox (the input, value = open/closed) plus an Accordion."""

    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get('elem_id')
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "label": kwargs.get('label', 'Accordion'), "elem_classes": ['input-accordion'], "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + '-extra', elem_classes='input-accordion-extra', min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        return self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"
