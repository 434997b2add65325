"""The tail-and-parse engine: from log bytes to metric events for the backends."""
