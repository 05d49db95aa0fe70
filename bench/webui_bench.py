"""Benchmark (not a test): PG off vs on in the running real WebUI, same seed, alternating, several rounds.

    PG_WEBUI_URL=http://127.0.0.1:7861 python bench/webui_bench.py [--rounds 3] [--sizes 128,256,512]
        [--steps 8] [--steps-at 512:3] [--only lora,dreambooth-exact] [--family sd15|sdxl]

Prints the time per image (median over rounds, whole request), its ratio to plain CFG (median over
median) and the WebUI process's peak RSS during each image (VmHWM, reset through /proc/<pid>/clear_refs
before every request; the PID is read from $HARNESS/logs/webui-<port>.pid,
or from $PG_WEBUI_PID_FILE), at every size, for: plain CFG
vs PG with a plain LoRA (low-rank path), a LoHa and a full-diff file (dense paths; made from the harness
LoRA by tests/webui/harness_models.py), and a DreamBooth checkpoint (rand_sd15_dreambooth loaded, base
rand_sd15) in exact and low-memory mode ("dreambooth"), or one of them ("dreambooth-exact",
"dreambooth-low-memory"). `--family sdxl`: the SDXL harness LoRA and DreamBooth pair (rand_sdxl loaded);
`--family anima|lumina2|zimage|chroma|wan`: Forge Neo's DiT harness models, their DiT-only LoRA (the lora group only).
PG and CFG alternate within each round (the order flips every round), after one warm-up image of each.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "webui"))

import webui_client as wc  # noqa: E402

HARNESS = os.environ.get("HARNESS") or os.path.expanduser("~/.cache/pg-webui-harness")
# per harness model family: the subject LoRA, and the DreamBooth pair (loaded checkpoint, base)
FAMILIES = {
    "sd15": dict(lora="rand_lora", dreambooth="rand_sd15_dreambooth", base="rand_sd15"),
    "sdxl": dict(lora="rand_sdxl_lora", dreambooth="rand_sdxl_dreambooth", base="rand_sdxl"),
    # Forge Neo's diffusion transformers (tests/webui/harness_models_dit.py): a DiT-only LoRA, no DreamBooth pair
    "anima": dict(lora="rand_anima_lora"),
    "lumina2": dict(lora="rand_lumina2_lora"),
    "zimage": dict(lora="rand_zimage_lora"),
    "chroma": dict(lora="rand_chroma_lora"),
    "wan": dict(lora="rand_wan_lora"),
}


def webui_pid(url: str) -> int | None:
    port = url.rsplit(":", 1)[-1].strip("/")
    # a fork's harness keeps its pid elsewhere: $FORK_HARNESS/<host>/logs (tests/webui/hosts)
    path = os.environ.get("PG_WEBUI_PID_FILE") or os.path.join(HARNESS, "logs", f"webui-{port}.pid")
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024 / 1024  # kB -> GiB
    return float("nan")


def reset_peak(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def timed(client: wc.Client, payload: dict, pid: int | None) -> tuple[float, float]:
    reset_peak(pid)
    t = time.perf_counter()
    r = client.txt2img(payload)
    elapsed = time.perf_counter() - t
    text = r["infotexts"][0]
    if "PG note" in text:
        print("  note:", text[text.index("PG note"):][:160])
    return elapsed, (_status(pid, "VmHWM") if pid else float("nan"))


def run_group(client, pid, name: str, variants: dict, rounds: int) -> list[tuple]:
    """variants: label -> payload; the first one is the baseline. Alternates the variants in every round."""
    print(f"[{name}] warm-up", flush=True)
    for payload in variants.values():
        timed(client, payload, pid)
    times = {k: [] for k in variants}
    peaks = {k: [] for k in variants}
    for i in range(rounds):
        order = list(variants) if i % 2 == 0 else list(reversed(list(variants)))
        for label in order:
            t, peak = timed(client, variants[label], pid)
            times[label].append(t)
            peaks[label].append(peak)
        print(f"[{name}] round {i + 1}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in variants), flush=True)
    base = list(variants)[0]
    rows = []
    for label in variants:
        med = statistics.median(times[label])
        rows.append((name, label, med, min(times[label]), med / statistics.median(times[base]), max(peaks[label])))
        print(f"[{name}] {label}: median {med:.2f}s, ratio {rows[-1][4]:.3f}, peak RSS {rows[-1][5]:.2f} GiB",
              flush=True)  # printed now too: a long group (low-memory build) may be cut short
    return rows


def _steps_at(text: str) -> dict[int, int]:
    """'512:3,1024:2' -> {512: 3, 1024: 2}."""
    out = {}
    for part in filter(None, text.split(",")):
        size, steps = part.split(":")
        out[int(size)] = int(steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("PG_WEBUI_URL", "http://127.0.0.1:7861"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="one size (same as --sizes N)")
    ap.add_argument("--sizes", default="128,256,512", help="comma-separated image sizes (px, square)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--steps-at", default="512:3", help="fewer steps at large sizes on CPU, e.g. 512:3")
    ap.add_argument("--omega", type=float, default=0.5)
    ap.add_argument("--schedule", choices=("constant", "linear", "auto"), default="constant",
                    help="PG's ω schedule (issue 19); 'linear' runs from --omega to --omega-end")
    ap.add_argument("--omega-end", type=float, default=0.0)
    ap.add_argument("--family", choices=sorted(FAMILIES), default="sd15",
                    help="harness models (the WebUI must have that family's checkpoint loaded)")
    ap.add_argument("--only", default="", help="comma-separated groups: lora,loha,full,dreambooth,dreambooth-exact")
    args = ap.parse_args()
    sizes = [args.size] if args.size else [int(x) for x in args.sizes.split(",") if x]
    steps_at = _steps_at(args.steps_at)
    client = wc.Client(args.url)
    pid = webui_pid(args.url)
    family = FAMILIES[args.family]
    groups = [g for g in (args.only.split(",") if args.only else ["lora", "loha", "full", "dreambooth"]) if g]
    if "dreambooth" not in family:
        if set(groups) - {"lora"}:
            print(f"[bench] --family {args.family}: only the lora group (no LoHa/full/DreamBooth files for it)")
        groups = ["lora"]
    names = {x["name"] for x in client.get("/sdapi/v1/loras")}
    if {"loha", "full"} & set(groups) and not {"pg_loha", "pg_full"} <= names:
        subprocess.run([os.path.join(HARNESS, "venv", "bin", "python"),
                        os.path.join(HERE, "..", "tests", "webui", "harness_models.py")], check=True)
        client.post("/sdapi/v1/refresh-loras", {})

    options = client.get("/sdapi/v1/options")
    functional_before = options.get("lora_functional", False)
    switch = args.family == "sdxl" and not functional_before and "lora_functional" in options  # A1111's option only
    if switch:
        # fp32 SDXL on a small machine: the Lora extension's default mode backs up every weight it may merge
        # into (a second model copy); its functional mode keeps none (tests/webui/conftest.py, lora_mode)
        print("[bench] SDXL: Lora functional mode for this run")
        client.post("/sdapi/v1/options", {"lora_functional": True})
    try:
        rows = run_sizes(client, pid, args, family, groups, sizes, steps_at)
    finally:
        if switch:
            client.post("/sdapi/v1/options", {"lora_functional": False})
    print_table(args, pid, rows)


def _pg(args, **values) -> list:
    """PG's positional arguments at --omega with --schedule (constant: the 9 arguments older hosts take)."""
    if args.schedule != "constant":
        values.update(schedule=args.schedule, omega_end=args.omega_end)
    return wc.pg_args(omega=args.omega, **values)


def run_sizes(client, pid, args, family, groups, sizes, steps_at) -> list[tuple]:
    rows = []
    for size in sizes:
        steps = steps_at.get(size, args.steps)

        def req(prompt, **extra):
            return wc.base_request(prompt=prompt, size=size, steps=steps, seed=4321, **extra)

        for kind, tag in (("lora", family["lora"]), ("loha", "pg_loha"), ("full", "pg_full")):
            if kind in groups:
                base = req(f"a photo of a cat <lora:{tag}:1>")
                rows += [(size, steps) + r for r in run_group(client, pid, f"{kind} {size}px", {
                    "CFG": base, f"PG {kind}": wc.with_pg(base, _pg(args))}, args.rounds)]
        db_groups = {"dreambooth", "dreambooth-exact", "dreambooth-low-memory"} & set(groups)
        if db_groups:
            before = client.get("/sdapi/v1/options")["sd_model_checkpoint"]
            client.post("/sdapi/v1/options", {"sd_model_checkpoint": family["dreambooth"]})
            try:
                base = req("a photo of a sks cat")
                variants = {"CFG": base}
                if db_groups & {"dreambooth", "dreambooth-exact"}:
                    variants["PG exact"] = wc.with_pg(base, _pg(args, base_checkpoint=family["base"]))
                if db_groups & {"dreambooth", "dreambooth-low-memory"}:
                    variants["PG low-memory"] = wc.with_pg(base, _pg(args, base_checkpoint=family["base"],
                                                                    base_mode="low-memory"))
                rows += [(size, steps) + r for r in run_group(client, pid, f"dreambooth {size}px", variants,
                                                              args.rounds)]
            finally:
                client.post("/sdapi/v1/options", {"sd_model_checkpoint": before})

    return rows


def print_table(args, pid, rows) -> None:
    schedule = "" if args.schedule == "constant" else f" schedule {args.schedule}" + (
        f" to {args.omega_end}" if args.schedule == "linear" else "")
    print(f"\n{args.family}, Euler, CFG 7, batch 1, ω={args.omega}{schedule}, {args.rounds} rounds alternating after a warm-up; "
          f"OMP_NUM_THREADS as the WebUI was started; pid {pid}")
    print("| size | steps | group | variant | median s/image | best s/image | ratio vs CFG (median) | peak RSS GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, steps, name, label, med, best, ratio, peak in rows:
        print(f"| {size} | {steps} | {name.split()[0]} | {label} | {med:.2f} | {best:.2f} | {ratio:.3f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
