"""Neo's layers as PG meets them: subclasses of torch's, whose forward applies `weight_function` (online and
low-VRAM LoRAs merged per forward from the unpatched parameter)."""
import torch
from torch import nn


class ForgeOperations:
    class Linear(nn.Linear):
        weight_function: list = []

        def forward(self, x):
            weight = self.weight
            for f in self.weight_function:
                weight = f(weight)
            return torch.nn.functional.linear(x, weight, self.bias)

    class Conv2d(nn.Conv2d):
        weight_function: list = []

        def forward(self, x):
            weight = self.weight
            for f in self.weight_function:
                weight = f(weight)
            return self._conv_forward(x, weight, self.bias)


def _neo_layer(child: nn.Module):
    if type(child) is nn.Linear:
        return ForgeOperations.Linear(child.in_features, child.out_features, child.bias is not None)
    if type(child) is nn.Conv2d:
        return ForgeOperations.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                      child.padding, child.dilation, child.groups, child.bias is not None)
    return None


def as_neo_layers(module: nn.Module) -> nn.Module:
    """The same model with every nn.Linear / nn.Conv2d replaced by Neo's layer class holding its weights."""
    for name, child in list(module.named_children()):
        layer = _neo_layer(child)
        if layer is None:
            as_neo_layers(child)
            continue
        layer.load_state_dict(child.state_dict())
        setattr(module, name, layer.requires_grad_(False))
    return module
