"""Our double of reForge's `ldm_patched` package: only what PG's adapter relies on (see ../README.md)."""
