"""Checks, against the fork's own code in its harness venv, the claims of docs/forks.md that PG's
adapter will rely on.  No server, no checkpoint: a stand-in model object records what the fork's
batched CFG function passes to `apply_model`, and the fork's LoRA merge function runs on a small
random weight.  Run from the fork's webui/ (tests/webui/hosts/probe.sh <host> does that):

  rows    one cond + one uncond entry → ONE apply_model call; which chunks/rows are uncond
  split   not enough free memory → one call per entry, each still marked
  and     two cond entries (AND) + uncond → one call, 3 chunks
  affine  the merged weight at strength s equals W0 + s·(W(1) − W0) for lora, lora+DoRA, loha, lokr
          (so θ_ω can be taken from the host's own merge at ω × strength, or as a scaled difference)

Prints PASS/FAIL lines; exit 1 on any FAIL.
"""
import os
import sys

HOST = sys.argv[1]
sys.argv = [sys.argv[0], "--always-cpu", "--skip-torch-cuda-test"]
sys.path.insert(0, os.getcwd())

from modules_forge.initialization import initialize_forge  # noqa: E402

initialize_forge()
import torch  # noqa: E402

torch.manual_seed(0)
failures = 0


def check(name, ok, detail=""):
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


class StandIn:
    """Has what the fork's batched function asks of the model; records every apply_model call."""

    def __init__(self, memory_per_call=0.0):
        self.calls = []
        self.memory_per_call = memory_per_call

    def memory_required(self, input_shape, **kwargs):
        return self.memory_per_call

    def apply_model(self, x, t, transformer_options=None, **kwargs):
        opts = dict(transformer_options or {})
        self.calls.append({"rows": x.shape[0], "opts": opts, "c_crossattn": kwargs.get("c_crossattn")})
        return x.clone()


B, C, H, W = 2, 4, 8, 8
x = torch.randn(B, C, H, W)
sigma = torch.full((B,), 5.0)
ctx_c, ctx_u, ctx_c2 = torch.randn(B, 77, 768), torch.randn(B, 77, 768), torch.randn(B, 77, 768)

if HOST in ("forge", "forge_neo"):
    from backend.sampling.condition import ConditionCrossAttn
    from backend.sampling import sampling_function as sf
    from backend.patcher import lora as host_lora

    def entry(ctx, strength=1.0):
        return {"model_conds": {"c_crossattn": ConditionCrossAttn(ctx)}, "strength": strength}

    def batched(model, cond, uncond):
        return sf.calc_cond_uncond_batch(model, cond, uncond, x, sigma, {})

    def merge(patches, weight, strength):
        return host_lora.merge_lora_to_weight([[strength, patches, 1.0, None, None]], weight.clone(), "w.weight")

    huge = float("inf")
else:
    from ldm_patched.modules.conds import CONDCrossAttn
    from ldm_patched.modules import samplers as sf
    from ldm_patched.modules import lora as host_lora

    def entry(ctx, strength=1.0):
        return {"model_conds": {"c_crossattn": CONDCrossAttn(ctx)}, "strength": strength}

    def batched(model, cond, uncond):
        return sf.calc_cond_batch(model, [cond, uncond], x, sigma, {})

    def merge(patches, weight, strength):
        return host_lora.calculate_weight([(strength, patches, 1.0, None, None)], weight.clone(), "w.weight")

    huge = float("inf")

# ---- rows: one call, which rows are uncond
m = StandIn()
batched(m, [entry(ctx_c)], [entry(ctx_u)])
o = m.calls[0]["opts"] if m.calls else {}
ca = m.calls[0]["c_crossattn"] if m.calls else None
check("rows.one_call", len(m.calls) == 1, f"{len(m.calls)} apply_model call(s), rows {[c['rows'] for c in m.calls]}")
check("rows.cond_or_uncond", o.get("cond_or_uncond") == [1, 0], f"cond_or_uncond={o.get('cond_or_uncond')} (1 = uncond)")
check("rows.uncond_first", ca is not None and torch.equal(ca[:B], ctx_u) and torch.equal(ca[B:], ctx_c),
      "c_crossattn rows = [uncond × B, cond × B]")
if HOST in ("forge", "forge_neo"):
    check("rows.indices", o.get("uncond_indices") == [0, 1] and o.get("cond_indices") == [2, 3]
          and isinstance(o.get("uncond_indices"), list),
          f"uncond_indices={o.get('uncond_indices')} cond_indices={o.get('cond_indices')} (host-side lists)")
    cm = o.get("cond_mark")
    check("rows.cond_mark", isinstance(cm, torch.Tensor) and cm.tolist() == [1.0, 1.0, 0.0, 0.0],
          f"cond_mark={cm.tolist() if isinstance(cm, torch.Tensor) else cm}")
else:
    check("rows.no_indices", "uncond_indices" not in o and "cond_mark" not in o,
          f"keys: {sorted(k for k in o if k not in ('sigmas',))}")

# ---- split: too little free memory → one call per entry, each marked
m = StandIn(memory_per_call=huge)
batched(m, [entry(ctx_c)], [entry(ctx_u)])
marks = [c["opts"].get("cond_or_uncond") for c in m.calls]
check("split.calls", len(m.calls) == 2 and sorted(map(tuple, marks)) == [(0,), (1,)],
      f"{len(m.calls)} calls, cond_or_uncond per call {marks}")

# ---- and: two cond entries (AND prompt) + uncond
m = StandIn()
batched(m, [entry(ctx_c, 0.7), entry(ctx_c2, 0.3)], [entry(ctx_u)])
marks = [c["opts"].get("cond_or_uncond") for c in m.calls]
check("and.one_call", len(m.calls) == 1 and sorted(marks[0]) == [0, 0, 1], f"cond_or_uncond per call {marks}")

# ---- affine in strength, per LoRA type (kohya key layout through the fork's own loader)
out_f, in_f, r = 16, 12, 4
W0 = torch.randn(out_f, in_f)
kinds = {
    "lora": {"lora_up.weight": torch.randn(out_f, r), "lora_down.weight": torch.randn(r, in_f), "alpha": torch.tensor(2.0)},
    "lora+dora": {"lora_up.weight": torch.randn(out_f, r), "lora_down.weight": torch.randn(r, in_f), "alpha": torch.tensor(2.0),
                  "dora_scale": W0.norm(dim=1, keepdim=True) * 1.1},
    "loha": {"hada_w1_a": torch.randn(out_f, r), "hada_w1_b": torch.randn(r, in_f), "hada_w2_a": torch.randn(out_f, r),
             "hada_w2_b": torch.randn(r, in_f), "alpha": torch.tensor(4.0)},
    "lokr": {"lokr_w1": torch.randn(4, 3), "lokr_w2": torch.randn(4, 4), "alpha": torch.tensor(1.0)},
}
for kind, tensors in kinds.items():
    sd = {f"lora_unet_w.{k}": v * 0.1 if v.dim() > 1 and not k.startswith("dora") else v for k, v in tensors.items()}
    try:
        loaded = host_lora.load_lora(sd, {"lora_unet_w": "w.weight"})
        # Forge's loader returns (patches, unmatched keys); reForge's (ComfyUI's) only the patches
        patches, rest = loaded if isinstance(loaded, tuple) else (loaded, {})
        patch = patches["w.weight"]
        full = merge(patch, W0, 1.0)
        worst = 0.0
        for s in (0.0, 0.25, 0.5, 0.8):
            got = merge(patch, W0, s)
            want = W0 + s * (full - W0)
            worst = max(worst, float((got - want).abs().max()))
        moved = float((full - W0).abs().max())
        check(f"affine.{kind}", moved > 1e-3 and worst < 1e-4 * max(1.0, moved),
              f"max |W(s) − (W0 + s·ΔW)| = {worst:.2e} over s∈{{0,.25,.5,.8}}, |ΔW|max = {moved:.3f}, unused keys {len(rest)}")
    except Exception as e:  # the loader's key layout differs: say so rather than hide it
        check(f"affine.{kind}", False, f"{type(e).__name__}: {e}")

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
