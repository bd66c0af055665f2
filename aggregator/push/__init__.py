"""Push to platforms that take data by push: a durable outbox that POSTs every stored
statement (or its evidence package) to each configured target once, in creation order, with
an ``Idempotency-Key``; nothing lost or sent as new twice across restarts (docs/platform-api.md).

- :mod:`.outbox`: the delivery table beside the statements (owed, delivered, refused, held);
- :mod:`.pusher`: :class:`Pusher`, one task per target (``async with Pusher(config) as p:
  await p.run()``);
- :mod:`.cli`: ``puhui aggregator push [status | retry]``.
"""

from aggregator.push.errors import PushError, PushSetupError
from aggregator.push.outbox import Delivery, PushOutbox, TargetStatus
from aggregator.push.pusher import Pusher, PushStats, classify

__all__ = [
    "Delivery",
    "PushError",
    "PushOutbox",
    "PushSetupError",
    "PushStats",
    "Pusher",
    "TargetStatus",
    "classify",
]
