"""Checkpoint list and switching.

Claims: a checkpoint's `title` is "<name> [<first 10 hex of sha256>]" once the host knows its sha256 (from its
hash cache, or computed when the file is first loaded; until then the title is just <name>: the double always
hashes), `name` its path below the checkpoint folder; it can be found by any of its ids (title, name, name without extension, model name, hashes).
get_closet_checkpoint_match(s): None for empty s; an exact id; else the shortest title containing s;
else the same without a trailing "[hash]". With sd_checkpoints_limit 1, switching checkpoints loads the new
weights INTO the loaded model object (same object, new `sd_checkpoint_info`), then model_loaded callbacks run.
"""
import hashlib
import os
import re

import safetensors.torch

from modules import script_callbacks, shared

checkpoints_list = {}  # title -> CheckpointInfo
checkpoint_aliases = {}  # any id -> CheckpointInfo


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _old_hash(path):  # 64 KiB read at 1 MiB: every file smaller than that hashes alike (host too)
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        root = shared.cmd_opts.ckpt_dir
        self.name = os.path.relpath(filename, root).replace(os.sep, "/") if root else os.path.basename(filename)
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(self.name.replace("/", "_"))[0]
        self.hash, self.sha256 = _old_hash(filename), _sha256(filename)
        self.shorthash = self.sha256[:10]
        self.title = f"{self.name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
        self.ids = [self.hash, self.model_name, self.title, self.name, self.name_for_extra, self.shorthash,
                    self.sha256, f"{self.name_for_extra} [{self.shorthash}]"]


def list_models():
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    for folder, _, files in sorted(os.walk(shared.cmd_opts.ckpt_dir or ".")):
        for f in sorted(files):
            if f.endswith((".safetensors", ".ckpt")):
                info = CheckpointInfo(os.path.join(folder, f))
                checkpoints_list[info.title] = info
                checkpoint_aliases.update(dict.fromkeys(info.ids, info))


def checkpoint_tiles(use_short=False):
    return [i.short_title if use_short else i.title for i in checkpoints_list.values()]


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    if search_string in checkpoint_aliases:
        return checkpoint_aliases[search_string]
    for needle in (search_string, re.sub(r"\s*\[[^]]+]\s*$", "", search_string)):
        hits = [i for i in checkpoints_list.values() if needle in i.title]
        if hits:
            return min(hits, key=lambda i: len(i.title))
    return None


def save_checkpoint(sd_model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd_model.state_dict().items()}, path)


def reload_model_weights(sd_model=None, info=None):
    sd_model = sd_model or shared.sd_model
    if info is None or sd_model.sd_checkpoint_info is info:
        return sd_model
    sd_model.load_state_dict(safetensors.torch.load_file(info.filename), strict=False)
    sd_model.sd_checkpoint_info, sd_model.sd_model_checkpoint = info, info.filename
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model
