"""MQTT driver: JSON payloads mapped to quantities (config model in ``config``, client in ``driver``)."""

from drivers.mqtt.driver import MqttHealth, MqttSubscriber

__all__ = ["MqttHealth", "MqttSubscriber"]
