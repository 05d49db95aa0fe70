"""Forge's layer classes as PG meets them: the Linear is an nn.Module (2-D weight, F.linear forward)."""
import torch
from torch import nn


class ForgeOperations:
    class Linear(nn.Module):
        def __init__(self, in_features, out_features, bias=True):
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.weight = nn.Parameter(torch.empty(out_features, in_features))
            self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
            self.scale_weight = None

        def forward(self, x):
            return torch.nn.functional.linear(x, self.weight, self.bias)


def as_forge_linears(module: nn.Module) -> nn.Module:
    """The same model with every nn.Linear replaced by ForgeOperations.Linear holding its weights."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            layer = ForgeOperations.Linear(child.in_features, child.out_features, child.bias is not None)
            with torch.no_grad():
                layer.weight.copy_(child.weight)
                if child.bias is not None:
                    layer.bias.copy_(child.bias)
            setattr(module, name, layer.requires_grad_(False))
        else:
            as_forge_linears(child)
    return module
