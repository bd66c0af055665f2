"""The ground floor every package stands on: the injected clock, asyncio and MQTT helpers,
one backoff, closed YAML models. It imports nothing of puhui's."""
