"""Private servers (Mosquitto, InfluxDB) on free loopback ports, for the tests and the demo.
The libraries (gateway, aggregator, drivers) never import it."""
