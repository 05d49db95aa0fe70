"""Host-level tests run PG's script on our double of the A1111 v1.10.1 host (tests/host/double).

Fixture `host`: fresh host state, the tiny model as shared.sd_model saved as ckpt/base.safetensors (the
loaded checkpoint), the Lora double installed; everything undone afterwards.
"""
import os
import sys

DOUBLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "double")
if DOUBLE not in sys.path:
    sys.path.insert(0, DOUBLE)

import pytest  # noqa: E402
import torch  # noqa: E402

import networks  # noqa: E402
from modules import script_callbacks, scripts, sd_models, shared  # noqa: E402
from tiny_sd import TinySD  # noqa: E402


@pytest.fixture
def host(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this tiny model is ~100x slower with thread pools on a 2-core box
    shared.opts.data.clear()
    shared.opts.data.update(shared.DEFAULT_OPTIONS)
    shared.opts.data_labels.clear()
    shared.state.interrupted = False
    shared.cmd_opts.lowvram = shared.cmd_opts.medvram = False
    shared.cmd_opts.ckpt_dir = str(tmp_path / "ckpt")
    script_callbacks.clear_callbacks()
    scripts.scripts_data.clear()
    scripts.reported.clear()
    shared.sd_model = TinySD()
    sd_models.save_checkpoint(shared.sd_model, str(tmp_path / "ckpt" / "base.safetensors"))
    sd_models.list_models()
    shared.sd_model.sd_checkpoint_info = sd_models.get_closet_checkpoint_match("base")
    shared.opts.sd_model_checkpoint = shared.sd_model.sd_checkpoint_info.title
    networks.install()
    try:
        yield shared.sd_model
    finally:
        networks.uninstall()
        script_callbacks.clear_callbacks()
        torch.set_num_threads(threads)
