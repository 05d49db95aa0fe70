"""Stand-in for modules/sd_unet.py (A1111 v1.10.1): alternative UNet registry; none is active unless a test sets current_unet."""
import torch

current_unet_option = None
current_unet = None
unet_options = []


class SdUnetOption:
    """mirrors sd_unet.SdUnetOption."""

    model_name = None
    label = None

    def create_unet(self):
        raise NotImplementedError()


class SdUnet(torch.nn.Module):
    """mirrors sd_unet.SdUnet."""

    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError()

    def activate(self):
        pass

    def deactivate(self):
        pass


def list_unets():
    from modules import script_callbacks
    unet_options.clear()
    unet_options.extend(script_callbacks.list_unets_callback())


def get_unet_option(option=None):
    return None


def apply_unet(option=None):
    pass
