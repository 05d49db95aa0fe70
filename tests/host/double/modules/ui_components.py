"""Claim: InputAccordion(value, **kwargs) is a checkbox-valued component used as a `with` block."""
import gradio as gr


class InputAccordion(gr.Component):
    def __init__(self, value, **kwargs):
        super().__init__(value=value, **kwargs)
