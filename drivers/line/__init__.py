"""Physical lines (RS-485 on a local serial port, or behind a TCP transparent serial server).

One owner per line serialises every protocol's frames on it. :mod:`drivers.line.contract`
is the interface protocol drivers (Modbus RTU, DL/T 645, CJ/T 188) program against.
"""
