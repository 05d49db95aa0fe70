"""Puts the A1111 stand-in (tests/host/standin) first on sys.path and provides fixtures for host-level tests.

Fixtures:
  standin_host  fresh stand-in host state + tiny model as shared.sd_model (checkpoint saved in tmp_path/ckpt)
  lora_host     standin_host + the stand-in Lora extension installed (networks.install/uninstall)
"""
import os
import sys

STANDIN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin")
if STANDIN_PATH not in sys.path:
    sys.path.insert(0, STANDIN_PATH)

import pytest  # noqa: E402

import networks  # noqa: E402,F401  (registers the Lora options like the built-in extension does at import)
import standin_host as _standin_host_module  # noqa: E402

_standin_host_module.snapshot_options()


@pytest.fixture
def standin_host_model(tmp_path):
    """The fresh StandinSdModel (shared.sd_model) after resetting the stand-in host.

    torch runs single-threaded meanwhile: for this tiny model thread pools cost ~100x (seen on a 2-core box).
    """
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _standin_host_module.reset_host(tmp_path / "ckpt")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def standin_host(standin_host_model):
    """The standin_host helper module, after a reset (shared.sd_model is a new tiny model)."""
    yield _standin_host_module


@pytest.fixture
def lora_host(standin_host):
    """The stand-in `networks` module with its torch patches installed; uninstalled (weights restored) afterwards."""
    import networks as nets
    nets.install()
    try:
        yield nets
    finally:
        nets.uninstall()
        nets.unregister_all()
