"""Modbus RTU driver: meters on a serial bus owned by one bus task (config model here)."""
