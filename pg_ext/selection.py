"""Which loaded networks the user selected: by any name the user may call one (prompt name, file, alias).

Generic over hosts: a loaded network is read by the attributes every WebUI's Lora extension gives it
(`name`, `mentioned_name`, `network_on_disk` with `name`, `alias`, `filename`).
"""
from __future__ import annotations

import os
from typing import Any, Sequence


def network_names(net: Any) -> set[str]:
    """Every name a user may call a loaded network by: prompt name, file name, alias."""
    names = {getattr(net, "name", None), getattr(net, "mentioned_name", None)}
    disk = getattr(net, "network_on_disk", None)
    if disk is not None:
        names |= {getattr(disk, "name", None), getattr(disk, "alias", None)}
        filename = getattr(disk, "filename", None)
        if filename:
            names.add(os.path.splitext(os.path.basename(filename))[0])
    return {n.lower() for n in names if n}


def select_networks(loaded: Sequence[Any], wanted: Sequence[str]) -> tuple[list[Any], list[str]]:
    """(selected networks, wanted names that match no loaded network); empty `wanted` selects all."""
    if not wanted:
        return list(loaded), []
    selected = [net for net in loaded if network_names(net) & {w.lower() for w in wanted}]
    unknown = [w for w in wanted if not any(w.lower() in network_names(net) for net in loaded)]
    return selected, unknown
