"""Claim (modules/lowvram.py): --lowvram AND --medvram both set `sd_model.lowvram = True`; only
--lowvram moves single blocks to the GPU per call. Without either the flag is False."""
from modules import shared


def apply(sd_model):
    sd_model.lowvram = bool(shared.cmd_opts.lowvram or shared.cmd_opts.medvram)
