"""vitalcast.security."""
