"""pyMeterBus (PyPI ``pymeterbus``), imported without its side effect on logging.

Importing the ``meterbus`` package runs ``logging.basicConfig(level=logging.INFO)`` (in its
``serial`` module): it would give the root logger a handler and level before ``puhui``
configures logging, so ``puhui``'s own ``basicConfig`` would do nothing. The root logger's
handlers and level are put back as they were.
"""

from __future__ import annotations

import logging

_root = logging.getLogger()
_handlers, _level = list(_root.handlers), _root.level

from meterbus import TelegramBody, VIFTable, VIFUnit  # noqa: E402
from meterbus.exceptions import MBusError  # noqa: E402

for _handler in list(_root.handlers):
    if _handler not in _handlers:
        _root.removeHandler(_handler)
_root.setLevel(_level)

__all__ = ["MBusError", "TelegramBody", "VIFTable", "VIFUnit"]
