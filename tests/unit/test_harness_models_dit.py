"""The DiT harness-model writer (tests/webui/harness_models_dit.py) without Neo: its streamed safetensors files
read back exactly with the safetensors library, its random values are seeded, and norm scales are told apart
from matrices (a norm initialised like a matrix would scale activations by ~0 and flatten the image)."""
import importlib.util
import os

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")
HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("harness_models_dit", os.path.join(HERE, "..", "webui", "harness_models_dit.py"))
hm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hm)

LAYOUT = {"blocks.0.attn.q_proj.weight": (8, 4), "blocks.0.attn.q_norm.weight": (4,), "blocks.0.mlp.bias": (8,),
          "decoder.head.0.gamma": (3, 1, 1, 1), "model.embed_tokens.weight": (16, 4), "logit": (), "patch.weight": (2, 3, 1, 2, 2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn])
def test_streamed_file_reads_back_exactly(tmp_path, dtype):
    path = str(tmp_path / "m.safetensors")
    expected = hm.random_tensors(LAYOUT, seed=3, dtype=dtype)
    n = hm.stream_save(path, LAYOUT, hm.random_values(LAYOUT, seed=3, dtype=dtype), dtype=dtype, metadata={"b": "2", "a": "1"})
    loaded = safetensors_torch.load_file(path)
    assert n == sum(int(torch.tensor(s).prod()) if s else 1 for s in LAYOUT.values())
    assert set(loaded) == set(LAYOUT)
    for key, value in expected.items():
        assert loaded[key].dtype == dtype and tuple(loaded[key].shape) == LAYOUT[key], key
        assert torch.equal(loaded[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
    assert size % 8 == 0  # the format's header alignment


def test_stream_refuses_a_shape_that_is_not_the_layouts(tmp_path):
    bad = (("blocks.0.attn.q_proj.weight", torch.zeros(4, 8)),)
    with pytest.raises(AssertionError):
        hm.stream_save(str(tmp_path / "bad.safetensors"), {"blocks.0.attn.q_proj.weight": (8, 4)}, iter(bad))
    assert not (tmp_path / "bad.safetensors").exists()


def test_values_are_seeded_and_norms_are_scales():
    a, b = hm.random_tensors(LAYOUT, seed=1), hm.random_tensors(LAYOUT, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in LAYOUT)
    assert not torch.equal(a["blocks.0.attn.q_proj.weight"], hm.random_tensors(LAYOUT, seed=2)["blocks.0.attn.q_proj.weight"])
    assert (a["blocks.0.attn.q_norm.weight"].float() - 1).abs().max() < 0.1
    assert (a["decoder.head.0.gamma"].float() - 1).abs().max() < 0.1
    gemma = hm.random_tensors(LAYOUT, seed=1, norm_center=0.0)  # Gemma's norms scale by 1 + w
    assert gemma["blocks.0.attn.q_norm.weight"].float().abs().max() < 0.1
    assert a["blocks.0.attn.q_proj.weight"].float().std() > 0.2  # N(0, 1/fan_in), fan_in 4


def test_lora_pair_moves_the_weight_by_the_asked_fraction():
    gen = torch.Generator().manual_seed(0)
    down, up = hm.lora_pair((512, 256), rank=4, move=0.5, gen=gen)
    assert down.shape == (4, 256) and up.shape == (512, 4)
    ratio = float((up @ down).std()) / (1 / 256 ** 0.5)
    assert 0.4 < ratio < 0.6, ratio
