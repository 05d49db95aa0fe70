"""The one entry function of Neo's LoRA key maps: the two halves of a modulation weight's rows trade places
(BFL's final adaLN orders them shift | scale, diffusers scale | shift)."""
import torch


def swap_scale_shift(weight):
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)
