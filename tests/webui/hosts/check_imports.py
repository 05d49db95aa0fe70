"""Light proof that a fork's harness venv + source import: the modules PG's adapter would touch,
without starting the server or loading a model.  Run from the fork's webui/ with its venv python:

    cd $FORK_HARNESS/<host>/webui && ../venv/bin/python <this file> <host>

Each line: OK/FAIL module (seconds) [what was checked | exception].  Exit 1 if any FAIL.
The fork's argument parsers read sys.argv, so it is set to the CPU flags start.sh uses, and
`modules_forge.initialization.initialize_forge()` runs first, as the forks' webui.py does.
"""
import importlib
import inspect
import os
import sys
import time
import traceback

HOST = sys.argv[1]
sys.argv = [sys.argv[0], "--always-cpu", "--skip-torch-cuda-test", "--no-half", "--precision", "full",
            "--use-cpu", "all", "--skip-prepare-environment", "--skip-install"]
if HOST == "forge_neo":
    sys.argv = [sys.argv[0], "--always-cpu", "--skip-prepare-environment", "--skip-install"]
if os.environ.get("CHECK_DATA_DIR"):
    sys.argv += ["--data-dir", os.environ["CHECK_DATA_DIR"]]
sys.path.insert(0, os.getcwd())

# (module, attributes that must exist) in import order; the adapter's contract in each fork
CHECKS = {
    "reforge": [
        ("torch", ["__version__"]),
        ("gradio", ["__version__"]),
        ("modules_forge.initialization", ["initialize_forge"]),
        ("ldm_patched.modules.model_management", ["cpu_state"]),
        ("ldm_patched.modules.model_patcher", ["ModelPatcher"]),
        ("ldm_patched.modules.samplers", ["calc_cond_batch", "sampling_function", "cfg_function"]),
        ("ldm_patched.modules.lora", ["calculate_weight", "model_lora_keys_unet"]),
        ("modules_forge.unet_patcher", ["UnetPatcher"]),
        ("modules.shared", ["opts", "cmd_opts"]),
        ("modules.shared_init", ["initialize"]),
        ("modules.script_callbacks", ["on_cfg_denoiser", "CFGDenoiserParams"]),
        ("modules.scripts", ["Script", "AlwaysVisible"]),
        # processing first: importing the samplers first runs into the forks' circular imports
        ("modules.processing", ["StableDiffusionProcessingTxt2Img"]),
        ("modules.sd_samplers", ["find_sampler_config"]),
        ("modules.sd_samplers_cfg_denoiser", ["CFGDenoiser"]),
        ("modules.ui_components", ["InputAccordion"]),
        ("modules.infotext_utils", ["PasteField"]),
        ("modules.sd_unet", ["current_unet"]),
        ("modules.prompt_parser", ["get_learned_conditioning", "reconstruct_cond_batch", "SdConditioning"]),
    ],
    "forge": [
        ("torch", ["__version__"]),
        ("gradio", ["__version__"]),
        ("modules_forge.initialization", ["initialize_forge"]),
        ("backend.args", ["args"]),
        ("backend.memory_management", ["cpu_state"]),
        ("backend.patcher.base", ["ModelPatcher"]),
        ("backend.patcher.lora", ["LoraLoader", "merge_lora_to_weight"]),
        ("backend.patcher.unet", ["UnetPatcher"]),
        ("backend.sampling.sampling_function", ["calc_cond_uncond_batch", "sampling_function"]),
        ("modules.shared", ["opts", "cmd_opts"]),
        ("modules.shared_init", ["initialize"]),
        ("modules.script_callbacks", ["on_cfg_denoiser", "CFGDenoiserParams"]),
        ("modules.scripts", ["Script", "AlwaysVisible"]),
        # processing first: importing the samplers first runs into the forks' circular imports
        ("modules.processing", ["StableDiffusionProcessingTxt2Img"]),
        ("modules.sd_samplers", ["find_sampler_config"]),
        ("modules.sd_samplers_cfg_denoiser", ["CFGDenoiser"]),
        ("modules.ui_components", ["InputAccordion"]),
        ("modules.infotext_utils", ["PasteField"]),
        ("modules.sd_unet", ["current_unet"]),
        ("modules.prompt_parser", ["get_learned_conditioning", "reconstruct_cond_batch", "SdConditioning"]),
    ],
}
CHECKS["forge_neo"] = CHECKS["forge"]

failed = 0
for name, attrs in CHECKS[HOST]:
    t0 = time.time()
    try:
        mod = importlib.import_module(name)
        missing = [a for a in attrs if not hasattr(mod, a)]
        detail = ("missing " + ", ".join(missing)) if missing else ", ".join(attrs)
        if name in ("torch", "gradio"):
            detail = mod.__version__
        for fn in ("calc_cond_batch", "calc_cond_uncond_batch"):
            if fn in attrs and hasattr(mod, fn):
                detail += f"; {fn}{inspect.signature(getattr(mod, fn))}"
        status = "FAIL" if missing else "OK"
        if name == "modules_forge.initialization" and not missing:
            # what webui.py does first: parses the fork's own args from sys.argv (--always-cpu) and
            # picks the torch device; importing the backend before it takes the CUDA defaults
            mod.initialize_forge()
            detail += "() called"
        if name == "modules.shared_init" and not missing:
            mod.initialize()  # creates shared.opts (webui.py's initialize.imports() does this)
            detail += "() called"
    except BaseException as e:  # SystemExit from an arg parser counts too
        status, detail = "FAIL", f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        if os.environ.get("VERBOSE"):
            traceback.print_exc()
    failed += status == "FAIL"
    print(f"{status} {name} ({time.time() - t0:.1f}s) {detail}", flush=True)

# Last: does PG's entry script import in this fork as it is today?  (No UI is built: only the module
# body runs, which registers PG's callbacks in this throw-away process.)
if os.environ.get("PG_EXT_DIR"):
    import importlib.util

    ext = os.environ["PG_EXT_DIR"]
    sys.path.insert(0, ext)
    t0 = time.time()
    try:
        spec = importlib.util.spec_from_file_location("pg_script_check", os.path.join(ext, "scripts", "personalization_guidance.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        status, detail = "OK", f"imports, host adapter {module.HOST.NAME!r}"
    except BaseException as e:
        status, detail = "FAIL", f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        if os.environ.get("VERBOSE"):
            traceback.print_exc()
    failed += status == "FAIL"
    print(f"{status} PG scripts/personalization_guidance.py ({time.time() - t0:.1f}s) {detail}", flush=True)
sys.exit(1 if failed else 0)
