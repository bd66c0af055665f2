"""Shared Modbus client logic: read policy (timeout, retries, backoff, circuit breaker),
request planning and decoding into samples, over any :class:`RegisterReader` transport."""
