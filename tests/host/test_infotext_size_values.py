"""A value shaped like a size ("512x768") comes back from the WebUI's infotext parser split in two
(key-1, key-2: our double's infotext_utils states that rule); PG puts it back together.
Found by test_infotext.py's hypothesis run with a LoRA named "0x0"."""
from modules.infotext_utils import parse_generation_parameters, quote
from pg_ext.config import Settings, infotext_value


def _parsed(settings):
    text = "a photo\n" + ", ".join(["Steps: 20"] + [f"{k}: {quote(v)}" for k, v in settings.infotext().items()])
    return parse_generation_parameters(text)


def test_a_lora_named_like_a_size_round_trips():
    settings = Settings(enabled=True, omega=0.25, loras=("512x768",))
    params = _parsed(settings)
    assert "PG LoRAs" not in params and params["PG LoRAs-1"] == "512"  # the host's split, as stated
    assert Settings.from_infotext(params) == settings
    assert infotext_value(params, "PG LoRAs") == "512x768"
    assert infotext_value(params, "PG start", "default") == "default"
