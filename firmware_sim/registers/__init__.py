"""Register maps of the simulated devices (encoding only; serving is in modbus_server)."""
