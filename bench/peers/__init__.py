"""``make bench-peers``: puhui's gateway beside ThingsBoard IoT Gateway, collectd and a bare
pymodbus loop, on the same simulated SDM630 fleet (see :mod:`bench.peers.run`)."""
