"""Profile (not a test): DreamBooth exact mode vs plain CFG on a real SD1.5-layout UNet, outside the WebUI.

    OMP_NUM_THREADS=1 $HARNESS/venv/bin/python bench/profile_exact.py [--size 256] [--calls 3] [--profile]

Builds ldm's UNetModel from the harness's v1-inference.yaml, loads rand_sd15_dreambooth's UNet, takes the
base differences from rand_sd15 with pg_ext.checkpoint (exact mode) and times one batched UNet call of
[1 cond row, 1 uncond row] without PG and with PG's exact-weights hooks (weak row = the last), alternating,
median over `--calls`. Attention runs through torch's scaled_dot_product_attention (the WebUI uses its own
optimized attention; PG does not hook attention itself). `--profile` prints torch.profiler's op table
for one call of each.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
HARNESS = os.environ.get("HARNESS") or os.path.expanduser("~/.cache/pg-webui-harness")
WEBUI = os.path.join(HARNESS, "webui")
sys.path.insert(0, os.path.join(WEBUI, "repositories", "stable-diffusion-stability-ai"))

from pg_ext.branch import WeakBranch  # noqa: E402
from pg_ext.checkpoint import checkpoint_deltas, read_unet_tensors  # noqa: E402
from pg_ext.deltas import DenseDelta, is_supported  # noqa: E402
from pg_ext.router import UNetRowRouter  # noqa: E402


def _sdpa_attention(self, x, context=None, mask=None):
    """ldm CrossAttention.forward through SDPA (what the WebUI's optimized attention amounts to)."""
    h = self.heads
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, d = q.shape
    split = lambda t: t.reshape(b, -1, h, d // h).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    return self.to_out(out.transpose(1, 2).reshape(b, n, d))


def build_unet(checkpoint: str):
    from omegaconf import OmegaConf
    from ldm.modules import attention
    from ldm.util import instantiate_from_config

    attention.CrossAttention.forward = _sdpa_attention
    config = OmegaConf.load(os.path.join(WEBUI, "configs", "v1-inference.yaml"))
    unet = instantiate_from_config(config.model.params.unet_config).eval()
    state = dict(read_unet_tensors(checkpoint))
    missing, unexpected = unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--omega", type=float, default=0.5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--rows", type=int, default=1, help="cond rows = uncond rows (batch size)")
    ap.add_argument("--fake-deltas", action="store_true",
                    help="differences as broadcast constants (no memory; same shapes and cost per call)")
    ap.add_argument("--ab-small-conv", action="store_true",
                    help="also time PG with conv2d (not unfold + matmul) for small convolutions' weak rows")
    ap.add_argument("--no-weak-copy", action="store_true",
                    help="θ_ω = the layer's own weights (no memory; per-call cost only, not the build)")
    args = ap.parse_args()
    if args.no_weak_copy:
        import pg_ext.branch as branch_module
        branch_module._minus = lambda param, diffs, keep, device, dtype: None if param is None else param.detach()
    models = os.path.join(WEBUI, "models", "Stable-diffusion")
    t0 = time.perf_counter()
    unet = build_unet(os.path.join(models, "rand_sd15_dreambooth.safetensors"))
    if args.fake_deltas:
        layer_deltas = {m: [DenseDelta(torch.full((1,), 1e-3).expand(m.weight.shape),
                                       None if m.bias is None else torch.full((1,), 1e-3).expand(m.bias.shape))]
                        for m in unet.modules() if is_supported(m)}
        print(f"built in {time.perf_counter() - t0:.1f}s: {len(layer_deltas)} layers with broadcast differences",
              flush=True)
    else:
        deltas = checkpoint_deltas(unet, read_unet_tensors(os.path.join(models, "rand_sd15.safetensors")))
        layer_deltas = deltas.deltas
        print(f"built in {time.perf_counter() - t0:.1f}s: {deltas.changed_tensors}/{deltas.total_tensors} tensors "
              f"differ, {len(layer_deltas)} layers, {deltas.nbytes / 2**30:.2f} GiB", flush=True)
    print(f"threads {torch.get_num_threads()}", flush=True)
    gen = torch.Generator().manual_seed(0)
    n, lat = args.rows, args.size // 8
    cond, uncond = torch.randn(n, 77, 768, generator=gen), torch.randn(n, 77, 768, generator=gen)
    x = torch.randn(2 * n, 4, lat, lat, generator=gen)
    t = torch.full((2 * n,), 500)
    context = torch.cat([cond, uncond])
    router = UNetRowRouter(unet, WeakBranch(args.omega, layer_deltas, exact_weights=True))

    def plain():
        return _without_hooks(router, lambda: unet(x, t, context=context))

    def pg():
        router.begin_step(cond, uncond)
        return unet(x, t, context=context)

    import pg_ext.deltas as deltas_module
    small = deltas_module.SMALL_CONV_PIXELS

    def pg_plain_conv():
        deltas_module.SMALL_CONV_PIXELS = 0
        try:
            return pg()
        finally:
            deltas_module.SMALL_CONV_PIXELS = small

    with torch.no_grad():
        router.attach()  # θ_ω weights are built in the first call, as in the first step of a job
        start, cpu = time.perf_counter(), time.thread_time()
        pg()
        print(f"first PG call (builds θ_ω): {time.perf_counter() - start:.2f}s wall, {time.thread_time() - cpu:.2f}s CPU; "
              f"θ_ω {router.branch.cache_bytes() / 2**30:.2f} GiB", flush=True)
        variants = {"CFG": plain, "PG exact": pg}
        if args.ab_small_conv:
            variants["PG exact, conv2d for all weak rows"] = pg_plain_conv
        times = {k: [] for k in variants}
        cpu_times = {k: [] for k in variants}
        for i in range(args.calls):
            for label in list(variants) if i % 2 == 0 else list(reversed(list(variants))):
                start, cpu = time.perf_counter(), time.thread_time()
                variants[label]()
                times[label].append(time.perf_counter() - start)
                cpu_times[label].append(time.thread_time() - cpu)
            print(f"call {i + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s (CPU {cpu_times[k][-1]:.3f}s)"
                                                for k, v in times.items()), flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
        for label in variants:
            print(f"{args.size}px batch {2 * n}: {label}: wall {med[label]:.3f}s (ratio {med[label] / med['CFG']:.3f}), "
                  f"CPU {cpu_med[label]:.3f}s (ratio {cpu_med[label] / cpu_med['CFG']:.3f})", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile
            tables = {}
            for label, fn in (("CFG", plain), ("PG exact", pg), ("CFG", plain), ("PG exact", pg)):
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    fn()
                tables.setdefault(label, []).append(_by_op_and_rows(prof))
            _compare(tables)


def _by_op_and_rows(prof) -> dict:
    """Self CPU seconds by (op, per-row shape of the first input): CFG's batch-2 op and PG's two halves meet."""
    out: dict = {}
    for evt in prof.key_averages(group_by_input_shape=True):
        shapes = evt.input_shapes or [[]]
        first = tuple(shapes[0][1:]) if shapes and shapes[0] else ()
        key = (evt.key, first)
        out[key] = out.get(key, 0.0) + evt.self_cpu_time_total / 1e6
    return out


def _compare(tables: dict) -> None:
    """Mean over the profiled calls of each variant; the rows where PG spends the most extra time."""
    mean = {label: {} for label in tables}
    for label, runs in tables.items():
        for run in runs:
            for key, sec in run.items():
                mean[label][key] = mean[label].get(key, 0.0) + sec / len(runs)
    cfg, pg = mean["CFG"], mean["PG exact"]
    total_cfg, total_pg = sum(cfg.values()), sum(pg.values())
    print(f"profiled self CPU: CFG {total_cfg:.2f}s, PG exact {total_pg:.2f}s (+{total_pg - total_cfg:.2f}s)")
    by_op: dict = {}
    for key in set(cfg) | set(pg):
        by_op.setdefault(key[0], [0.0, 0.0])
        by_op[key[0]][0] += cfg.get(key, 0.0)
        by_op[key[0]][1] += pg.get(key, 0.0)
    print("by op (CFG s, PG s, PG - CFG):")
    for op, (c, p) in sorted(by_op.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))[:12]:
        print(f"  {op:45s} {c:7.3f} {p:7.3f} {p - c:+7.3f}")
    print("by op and per-row input shape (largest differences):")
    diffs = sorted(set(cfg) | set(pg), key=lambda k: -abs(pg.get(k, 0.0) - cfg.get(k, 0.0)))
    for key in diffs[:25]:
        c, p = cfg.get(key, 0.0), pg.get(key, 0.0)
        print(f"  {key[0]:40s} {str(list(key[1])):22s} {c:7.3f} {p:7.3f} {p - c:+7.3f}")


def _without_hooks(router: UNetRowRouter, fn):
    """Run `fn` with PG's hooks off but its θ_ω cache kept (one job: the cache lives for the whole pass)."""
    for owner in (router, router.branch):
        for handle in owner._handles:
            handle.remove()
        owner._handles = []
    router.branch.rows = None
    try:
        return fn()
    finally:
        router.attach()


if __name__ == "__main__":
    main()
