"""Our double of Forge 2's `backend` package: only what PG's adapter relies on (see ../README.md)."""
