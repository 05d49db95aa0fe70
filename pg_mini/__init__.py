"""A miniature text-to-image diffusion model for demonstrating and measuring Personalization Guidance.

Procedural 32×32 images of coloured shapes, a tiny text encoder and UNet (v-prediction), DreamBooth
personalization of a checkered square bound to the rare token "sks". Not loaded by the WebUI extension.
"""
