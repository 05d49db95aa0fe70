"""Our double of Forge Neo's `backend` package: only what PG's adapter relies on (see ../README.md)."""
