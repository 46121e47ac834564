"""Browser tests: the operator UI in a real Chromium, against real MQTT ingest."""
