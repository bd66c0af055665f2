"""Errors of the push outbox.

::

    AggregatorError
    ├── StoreError                  the outbox's SQLite failed (chained): the pusher stops
    └── PushError                   the pusher cannot run
        └── PushSetupError          a target's token or TLS files, or the aggregator's keys,
                                    cannot be used (the message names the setting)

A failed delivery is not an error: a 5xx, a timeout or a refused connection is retried, a
receiver's refusal is recorded (state ``refused``), and so is a statement the pusher will not
send (``held``).
"""

from __future__ import annotations

from aggregator.errors import AggregatorError


class PushError(AggregatorError):
    """The pusher cannot run."""


class PushSetupError(PushError):
    """A push target or the keys the pusher checks statements with cannot be set up."""
