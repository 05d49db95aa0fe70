"""The demo command runs end to end on a reduced setting; the shipped weights stay within budget."""
import glob
import os

from PIL import Image

from pg_mini import demo
from pg_mini.io import WEIGHTS


def test_demo_quick_writes_png(tmp_path, capsys):
    out = tmp_path / "demo.png"
    demo.main(["--quick", "--out", str(out)])
    image = Image.open(out)
    assert image.width > 500 and image.height > 300
    printed = capsys.readouterr().out
    assert "CFG s=3" in printed and "PG w=0" in printed and "AG w=0" in printed


def test_shipped_weights_fit_the_budget():
    files = glob.glob(os.path.join(WEIGHTS, "*.safetensors"))
    names = {os.path.basename(f) for f in files}
    assert {"base.safetensors", "ft.safetensors", "ft_noprior.safetensors", "lora.safetensors",
            "lora_noprior.safetensors", "judge.safetensors"} <= names
    assert sum(os.path.getsize(f) for f in files) <= 15 * 1024 * 1024
