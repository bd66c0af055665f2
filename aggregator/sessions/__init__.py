"""Back-end session import: a charging network's session records (charging orders), checked
and kept as platform-attested evidence (docs/ev-sessions.md).

- :mod:`.records`: the file schema (JSON and CSV) and the normalised :class:`SessionRecord`;
- :mod:`.checks`: per-record checks (readings, energy, power, continuity per connector);
- :mod:`.manifest`: the network's signed import manifest;
- :mod:`.intake`: one import, from bytes to a report (the CLI and the HTTP intake share it);
- :mod:`.cli`: ``puhui aggregator networks`` and ``puhui aggregator sessions``.
"""
