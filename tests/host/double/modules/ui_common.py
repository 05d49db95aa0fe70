"""Claim: create_refresh_button(component, refresh_method, refreshed_args, elem_id) makes a tool button."""
import gradio as gr


def create_refresh_button(component, refresh_method, refreshed_args, elem_id):
    return gr.Button(value="refresh", elem_id=elem_id)
