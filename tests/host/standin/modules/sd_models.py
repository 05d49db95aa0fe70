"""Stand-in for modules/sd_models.py (A1111 v1.10.1): checkpoint registry, matching rules and read_state_dict.

Differences: sha256 is computed directly from the file (the host reads it from cache.json and may
leave it None until computed) unless `shared.cmd_opts.no_hashing`; no model loading —
`reload_model_weights` only fires nothing and returns shared.sd_model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import safetensors.torch
import torch

from modules import devices, errors, paths, shared

model_dir = "Stable-diffusion"
model_path = os.path.abspath(os.path.join(paths.models_path, model_dir))

checkpoints_list = {}
checkpoint_aliases = {}
checkpoint_alisases = checkpoint_aliases  # for compatibility with old name
checkpoints_loaded = {}


def model_hash(filename):
    """mirrors sd_models.model_hash — old 8-hex hash of 64 KiB at offset 1 MiB."""
    try:
        with open(filename, "rb") as file:
            m = hashlib.sha256()
            file.seek(0x100000)
            m.update(file.read(0x10000))
            return m.hexdigest()[0:8]
    except FileNotFoundError:
        return 'NOFILE'


def _sha256(filename):
    if shared.cmd_opts.no_hashing or not os.path.exists(filename):
        return None
    h = hashlib.sha256()
    with open(filename, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_metadata_from_safetensors(filename):
    """mirrors sd_models.read_metadata_from_safetensors — the __metadata__ dict (JSON strings decoded)."""
    with open(filename, mode="rb") as file:
        metadata_len = int.from_bytes(file.read(8), "little")
        json_data = json.loads(file.read(metadata_len))
    res = {}
    for k, v in json_data.get("__metadata__", {}).items():
        if isinstance(v, str) and v[0:1] == '{':
            try:
                v = json.loads(v)
            except Exception:
                pass
        res[k] = v
    return res


class CheckpointInfo:
    """mirrors sd_models.CheckpointInfo — name relative to ckpt dir / model_path, titles and alias ids."""

    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        abs_ckpt_dir = os.path.abspath(shared.cmd_opts.ckpt_dir) if shared.cmd_opts.ckpt_dir is not None else None
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if abs_ckpt_dir and abspath.startswith(abs_ckpt_dir):
            name = abspath.replace(abs_ckpt_dir, '')
        elif abspath.startswith(model_path):
            name = abspath.replace(model_path, '')
        else:
            name = os.path.basename(filename)
        if name.startswith("\\") or name.startswith("/"):
            name = name[1:]
        self.metadata = {}
        if self.is_safetensors and os.path.exists(filename):
            try:
                self.metadata = read_metadata_from_safetensors(filename)
            except Exception as e:
                errors.display(e, f"reading metadata for {filename}")
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = model_hash(filename)
        self.sha256 = _sha256(filename)
        self.shorthash = self.sha256[0:10] if self.sha256 else None
        self.title = name if self.shorthash is None else f'{name} [{self.shorthash}]'
        self.short_title = self.name_for_extra if self.shorthash is None else f'{self.name_for_extra} [{self.shorthash}]'
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra, f'{name} [{self.hash}]']
        if self.shorthash:
            self.ids += [self.shorthash, self.sha256, f'{self.name} [{self.shorthash}]', f'{self.name_for_extra} [{self.shorthash}]']

    def register(self):
        """mirrors CheckpointInfo.register — title into checkpoints_list, every id into checkpoint_aliases."""
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self

    def calculate_shorthash(self):
        self.sha256 = _sha256(self.filename)
        if self.sha256 is None:
            return
        return self.shorthash


def checkpoint_tiles(use_short=False):
    """mirrors sd_models.checkpoint_tiles."""
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def list_models():
    """mirrors sd_models.list_models — (re)registers every .ckpt/.safetensors (not *.vae.*) under model_path and --ckpt-dir, plus --ckpt."""
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    found = []
    for folder in [model_path, shared.cmd_opts.ckpt_dir]:
        if folder is None or not os.path.isdir(folder):
            continue
        for root, _, files in os.walk(folder, followlinks=True):
            for fn in sorted(files):
                full = os.path.join(root, fn)
                low = fn.lower()
                if low.endswith((".ckpt", ".safetensors")) and not low.endswith((".vae.ckpt", ".vae.safetensors")) and full not in found:
                    found.append(full)
    cmd_ckpt = shared.cmd_opts.ckpt
    if cmd_ckpt is not None and os.path.exists(cmd_ckpt):
        checkpoint_info = CheckpointInfo(cmd_ckpt)
        checkpoint_info.register()
        shared.opts.data['sd_model_checkpoint'] = checkpoint_info.title
    for filename in sorted(found, key=lambda s: s.lower()):
        CheckpointInfo(filename).register()


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    """mirrors sd_models.get_closet_checkpoint_match: exact alias; else shortest title containing it; else same without a trailing [hash]."""
    if not search_string:
        return None
    checkpoint_info = checkpoint_aliases.get(search_string, None)
    if checkpoint_info is not None:
        return checkpoint_info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    search_string_without_checksum = re.sub(re_strip_checksum, '', search_string)
    found = sorted([info for info in checkpoints_list.values() if search_string_without_checksum in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    return None


def select_checkpoint():
    """mirrors sd_models.select_checkpoint — opts.sd_model_checkpoint or the first registered one."""
    checkpoint_info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint, None)
    if checkpoint_info is not None:
        return checkpoint_info
    return next(iter(checkpoints_list.values()), None)


def get_state_dict_from_checkpoint(pl_sd):
    """mirrors sd_models.get_state_dict_from_checkpoint minus the SD1/SD2-turbo key renames."""
    pl_sd = pl_sd.pop("state_dict", pl_sd)
    pl_sd.pop("state_dict", None)
    return pl_sd


def read_state_dict(checkpoint_file, print_global_state=False, map_location=None):
    """mirrors sd_models.read_state_dict — safetensors via load_file(device=map_location or weight_load_location or optimal), else torch.load."""
    _, extension = os.path.splitext(checkpoint_file)
    if extension.lower() == ".safetensors":
        device = map_location or shared.weight_load_location or devices.get_optimal_device_name()
        if not shared.opts.disable_mmap_load_safetensors:
            pl_sd = safetensors.torch.load_file(checkpoint_file, device=device)
        else:
            with open(checkpoint_file, 'rb') as f:
                pl_sd = safetensors.torch.load(f.read())
            pl_sd = {k: v.to(device) for k, v in pl_sd.items()}
    else:
        pl_sd = torch.load(checkpoint_file, map_location=map_location or shared.weight_load_location, weights_only=True)
    if print_global_state and "global_step" in pl_sd:
        print(f"Global Step: {pl_sd['global_step']}")
    return get_state_dict_from_checkpoint(pl_sd)


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """Stand-in: the active model never changes unless a test assigns shared.sd_model."""
    return shared.sd_model


def apply_token_merging(sd_model, token_merging_ratio):
    pass


def apply_alpha_schedule_override(sd_model, p=None):
    pass


class SkipWritingToConfig:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
