"""vitalcast.modeling."""
