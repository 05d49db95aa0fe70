"""What the forks' loaders put on `sd_model` around their patchers, as PG's adapters meet it (test helper,
not a host file): `forge_objects` with `unet` / `clip` and `shallow_copy()`, a CLIP holding the text
model and the patcher that patches it, and seeded random LoRA factors for every Linear/Conv2d layer."""
import torch
from torch import nn

from tiny_sd import DIM, TextLayers
from tiny_unet import TinyUNet


class ForgeObjects:
    def __init__(self, unet, clip):
        self.unet, self.clip = unet, clip

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip)


class CLIP:
    """forge_objects.clip: `cond_stage_model` and its `patcher`; a clone shares the model, clones the patcher."""

    def __init__(self, model, patcher):
        self.cond_stage_model, self.patcher = model, patcher

    def clone(self):
        return CLIP(self.cond_stage_model, self.patcher.clone())


def random_factors(roots: dict, seed: int, only=lambda key: True, layers=(nn.Linear, nn.Conv2d)):
    """(key, up, down, generator) of a rank-2 LoRA on every layer of `roots` ({key prefix: module}) whose
    weight key passes `only`; up/down shaped for the layer (1x1 up and full-kernel down on a Conv2d)."""
    gen = torch.Generator().manual_seed(seed)
    for prefix, root in roots.items():
        for name, layer in root.named_modules():
            key = f"{prefix}{name}.weight"
            if not only(key) or not isinstance(layer, layers):
                continue
            conv = isinstance(layer, nn.Conv2d)
            o, i = layer.weight.shape[0], layer.weight.shape[1]
            up = torch.randn(*((o, 2, 1, 1) if conv else (o, 2)), generator=gen) * 0.3
            down = torch.randn(*((2, i, *layer.kernel_size) if conv else (2, i)), generator=gen) * 0.3
            yield key, up, down, gen


class ForkModel:
    """sd_model of a fork around a tiny UNet and text model built from the host's layer classes
    (`host_layers`), each under a `patcher`; the UNet behind the host's model wrapper (`k_model`)."""

    def __init__(self, host_layers, patcher, k_model, chunks_per_call=None):
        torch.manual_seed(0)
        unet = host_layers(TinyUNet(16, DIM)).requires_grad_(False)
        text = host_layers(TextLayers()).requires_grad_(False)
        self.forge_objects = ForgeObjects(patcher(k_model(unet, chunks_per_call)), CLIP(text, patcher(text)))
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()

    def modules(self):
        return list(self.forge_objects_original.unet.model.modules()) + \
            list(self.forge_objects_original.clip.cond_stage_model.modules())


def two_loras(model, patches) -> list:
    """(file, patches, strength) of a subject LoRA everywhere and a LoHa style on the attention layers
    (`patches(model, seed, kind, only)` makes them in the host's layout)."""
    return [("/loras/subject.safetensors", patches(model, 11, "lora"), 1.0),
            ("/loras/style.safetensors", patches(model, 12, "loha", only=lambda k: "attn" in k), 0.8)]


def cfg_inputs(batch: int):
    """x, sigma, cond token ids, negative token ids of one CFG step, seeded."""
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(batch, 4, 8, 8, generator=gen), torch.full((batch,), 400.0),
            torch.randint(0, 64, (batch, 7), generator=gen), torch.randint(0, 64, (batch, 7), generator=gen))


def lora_file(name: str) -> str:
    """Where a test's LoRA `name` 'is on disk' (the forks key their records on the file)."""
    return f"/loras/{name}.safetensors"


def lora_hash(targets) -> str:
    """`current_lora_hash` as the forks' `load_networks` records it: the str() of [[file, unet, te, ...], ...]."""
    return str([list(t) for t in targets])


def install_networks(monkeypatch, names, files: dict, load_lora_for_models):
    """The forks' Lora extension module (`networks`) as the adapters meet it: the prompt's `loaded_networks`
    (with their files), the extension's file reader and the host's `load_lora_for_models`."""
    import sys
    import types

    nets = [types.SimpleNamespace(name=n, network_on_disk=types.SimpleNamespace(filename=lora_file(n))) for n in names]
    module = types.SimpleNamespace(loaded_networks=nets, load_lora_state_dict=lambda f: dict(files[f]),
                                   load_lora_for_models=load_lora_for_models)
    monkeypatch.setitem(sys.modules, "networks", module)
    return nets


def hires_prompt_without(monkeypatch, tag: str) -> None:
    """Jobs whose hires prompt is the prompt without `tag` (a LoRA only the first pass loads)."""
    from modules import processing

    setup = processing.StableDiffusionProcessingTxt2Img.setup_prompts

    def setup_prompts(p):
        setup(p)
        p.all_hr_prompts = [prompt.replace(tag, "") for prompt in p.all_hr_prompts]
    monkeypatch.setattr(processing.StableDiffusionProcessingTxt2Img, "setup_prompts", setup_prompts)


def assert_input_error_is_a_422(runner, model, args: dict, prompt: str, field: str, **job) -> None:
    """An API job whose PG input is wrong answers 422 naming `field`; the weights are those a PG-off job
    leaves (the host's LoRAs of the last pass merged or not, as it keeps them)."""
    import torch
    from fastapi import HTTPException
    from modules import processing
    from pg_host import make_p, run

    def weights():
        return [t.detach().clone() for m in model.modules() for t in m.parameters(recurse=False)]

    run(runner, prompt=prompt, **job)
    expected = weights()
    p = make_p(runner, args, prompt=prompt, **job)
    p.is_api = True
    try:
        processing.process_images(p)
    except HTTPException as error:
        assert error.status_code == 422 and f"'{field}'" in error.detail, error.detail
    else:
        raise AssertionError(f"no error; infotext: {p.extra_generation_params}")
    after = weights()
    assert len(after) == len(expected) and all(torch.equal(a, b) for a, b in zip(expected, after))


def seeded_rounding(value: torch.Tensor, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """How Neo and reForge write a merged weight back to its stored dtype (the contract, not their code): a
    16/32-bit float by a plain cast; an 8-bit float rounded up or down at random, seeded by the key, so the
    same key and value round the same way every time (here: uniform noise of one step, then to nearest)."""
    if torch.finfo(dtype).bits > 8:
        return value.to(dtype)
    mantissa = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}[dtype]
    smallest_step = torch.finfo(dtype).smallest_normal * 2.0 ** -mantissa
    exponent = torch.floor(torch.log2(value.abs().float().clamp_min(torch.finfo(dtype).smallest_normal)))
    step = torch.maximum(2.0 ** (exponent - mantissa), torch.tensor(smallest_step))
    noise = torch.rand(value.shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    return (value.float() + noise * step).clamp(torch.finfo(dtype).min, torch.finfo(dtype).max).to(dtype)


def key_seed(key: str) -> int:
    """An int from a parameter key (what the forks seed that rounding with)."""
    import zlib

    return zlib.crc32(key.encode())
