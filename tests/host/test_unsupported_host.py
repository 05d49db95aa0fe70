"""A host without adapter (Forge 2 today): the script still loads and jobs run as plain CFG with a note."""
import torch

from pg_host import assert_no_hooks, images, load_pg, pg_module, run

import pg_hosts


def test_jobs_run_as_plain_cfg_and_say_why(host, monkeypatch):
    runner = load_pg()
    monkeypatch.setattr(pg_module(), "HOST", pg_hosts.load("forge"))
    pg, _ = run(runner, [True, 0.3])
    off, _ = run(runner)
    assert "PG note: " in pg.infotexts[0] and "(forge) is not supported yet" in pg.infotexts[0]
    assert torch.equal(images(pg), images(off))
    assert_no_hooks()
