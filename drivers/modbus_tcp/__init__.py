"""Modbus TCP driver (network code comes with the firmware_sim issue; config model here)."""
