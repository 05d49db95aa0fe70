"""Run by the WebUI at launch: PG needs nothing beyond what the WebUI already installs (torch, safetensors)."""
import launch

if not launch.is_installed("safetensors"):
    launch.run_pip("install safetensors", "safetensors for Personalization Guidance")
