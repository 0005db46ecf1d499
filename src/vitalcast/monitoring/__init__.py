"""vitalcast.monitoring."""
