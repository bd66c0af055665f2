"""The aggregator's HTTP API for platforms (``/v1/...``): read-only access to attested data,
signed statements and their evidence packages, behind scoped bearer tokens.

- :mod:`.tokens`: bearer tokens (stored hashed, expiring, revocable) and their scopes;
- :mod:`.app`: the FastAPI application (OpenAPI 3.1 generated from the code);
- :mod:`.metrics`: the Prometheus text exposition of ``/metrics``;
- :mod:`.server`: ``puhui aggregator api``: uvicorn with TLS;
- :mod:`.cli`: ``puhui aggregator tokens create|list|revoke``.

No endpoint writes evidence: the API opens the stores for reading only what it serves.
"""
