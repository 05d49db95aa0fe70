"""Claim: `current_unet` is None unless a replacement UNet (e.g. TensorRT) is active."""
current_unet = None
