"""Stand-in for modules/ui_common.py (A1111 v1.10.1): create_refresh_button (the refresh fn is kept on the button as `.refresh`)."""
import gradio as gr

from modules.ui_components import ToolButton

refresh_symbol = '\U0001f504'  # 🔄


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id):
    """mirrors ui_common.create_refresh_button — clicking runs refresh_method, then sets refreshed_args on the component(s)."""
    refresh_components = refresh_component if isinstance(refresh_component, list) else [refresh_component]
    label = next((getattr(c, 'label', None) for c in refresh_components if getattr(c, 'label', None) is not None), None)

    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for k, v in args.items():
            for comp in refresh_components:
                setattr(comp, k, v)
        return [gr.update(**(args or {})) for _ in refresh_components] if len(refresh_components) > 1 else gr.update(**(args or {}))

    refresh_button = ToolButton(value=refresh_symbol, elem_id=elem_id, tooltip=f"{label}: refresh" if label else "Refresh")
    refresh_button.click(fn=refresh, inputs=[], outputs=refresh_components)
    refresh_button.refresh = refresh
    return refresh_button
