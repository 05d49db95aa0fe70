"""Stand-in for modules/shared_cmd_options.py (A1111 v1.10.1): parsed command line flags with host defaults."""
import argparse

parser = argparse.ArgumentParser()
for flag, default in [
    ("--ckpt", None), ("--ckpt-dir", None), ("--lora-dir", None), ("--embeddings-dir", "embeddings"),
    ("--freeze-settings-in-sections", None), ("--freeze-specific-settings", None),
]:
    parser.add_argument(flag, type=str, default=default)
for flag in ["--freeze-settings", "--hide-ui-dir-config", "--no-prompt-history", "--api", "--nowebui", "--lowram",
             "--medvram", "--lowvram", "--no-half", "--no-hashing", "--skip-install", "--disable-safe-unpickle",
             "--disable-extra-extensions", "--disable-all-extensions"]:
    parser.add_argument(flag, action="store_true")

cmd_opts = parser.parse_args([])
cmd_opts.no_prompt_history = True  # the stand-in never writes params.txt
