"""Shared fixtures: the shipped miniature weights, loaded once per session (no training here)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pg_mini.guide import load_personalized  # noqa: E402
from pg_mini.io import load_base  # noqa: E402


@pytest.fixture(scope="session")
def base():
    torch.set_num_threads(1)
    return load_base()


@pytest.fixture(scope="session", params=["ft", "lora"])
def model(request, base):
    return load_personalized(request.param, base)
