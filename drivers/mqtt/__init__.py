"""MQTT driver: JSON payloads mapped to quantities (config model here)."""
