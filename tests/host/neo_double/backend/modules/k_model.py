"""KModel.apply_model: Forge 2's, unchanged in Neo (transformer_options reach the UNet as a keyword)."""
from backend._forge_double import load

KModel = load("backend.modules._forge_k_model", "modules/k_model.py").KModel
