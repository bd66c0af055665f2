"""The in-tree drivers, by the name a site config uses (explicit; no folder scanning).

Maps a driver name to its connection model. The driver classes join this dict when the
network half lands; third-party drivers would come through entry points.
"""

from __future__ import annotations

from pydantic import BaseModel

from drivers.cjt188.config import Cjt188Connection
from drivers.dlt645.config import Dlt645Connection
from drivers.mbus.config import MbusConnection
from drivers.modbus_rtu.config import ModbusRtuConnection
from drivers.modbus_tcp.config import ModbusTcpConnection
from drivers.mqtt.config import MqttConnection

CONNECTIONS: dict[str, type[BaseModel]] = {
    "modbus_tcp": ModbusTcpConnection,
    "modbus_rtu": ModbusRtuConnection,
    "mqtt": MqttConnection,
    "dlt645": Dlt645Connection,
    "cjt188": Cjt188Connection,
    "mbus": MbusConnection,
}
