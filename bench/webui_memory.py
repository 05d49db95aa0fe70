"""Memory of DreamBooth mode in the running real WebUI (not a test): RSS of the WebUI process before a PG
job, after it (with the base-difference cache kept), and after a job with the cache turned off.

    PG_WEBUI_URL=http://127.0.0.1:7861 python bench/webui_memory.py

Also checks the second job with the same base reads nothing from disk (PG logs each read of a base).
"""
from __future__ import annotations

import gc
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "webui"))
sys.path.insert(0, HERE)

import webui_client as wc  # noqa: E402
from webui_bench import HARNESS, _status, webui_pid  # noqa: E402


def rss(pid: int) -> float:
    time.sleep(1.0)
    return _status(pid, "VmRSS")


def reads_of_base(port: str) -> int:
    with open(os.path.join(HARNESS, "logs", f"webui-{port}.log"), errors="replace") as f:
        return f.read().count("PG: reading base checkpoint")


def main() -> None:
    url = os.environ.get("PG_WEBUI_URL", "http://127.0.0.1:7861")
    port = url.rsplit(":", 1)[-1].strip("/")
    client, pid = wc.Client(url), webui_pid(url)
    before = client.get("/sdapi/v1/options")
    client.post("/sdapi/v1/options", {"sd_model_checkpoint": "rand_sd15_dreambooth", "pg_base_cache_size": 1})
    try:
        req = wc.base_request(prompt="a photo of a sks cat", size=64, steps=3, seed=4321)
        client.txt2img(req)
        idle = rss(pid)
        for mode in ("exact", "low-memory"):
            pg = wc.with_pg(req, wc.pg_args(omega=0.5, base_checkpoint="rand_sd15", base_mode=mode))
            reads = reads_of_base(port)
            client.txt2img(pg)
            first = reads_of_base(port) - reads
            after_first = rss(pid)
            client.txt2img(pg)
            second = reads_of_base(port) - reads - first
            after_second = rss(pid)
            print(f"{mode}: idle {idle:.2f} GiB, after 1st job {after_first:.2f} (+{after_first - idle:.2f} cache), "
                  f"after 2nd {after_second:.2f}; base reads: 1st job {first}, 2nd job {second}")
        client.post("/sdapi/v1/options", {"pg_base_cache_size": 0})
        client.txt2img(wc.with_pg(req, wc.pg_args(omega=0.5, base_checkpoint="rand_sd15")))
        gc.collect()
        print(f"cache size 0: after a PG job {rss(pid):.2f} GiB (idle was {idle:.2f})")
    finally:
        client.post("/sdapi/v1/options", {"sd_model_checkpoint": before["sd_model_checkpoint"],
                                          "pg_base_cache_size": before.get("pg_base_cache_size", 1)})


if __name__ == "__main__":
    main()
