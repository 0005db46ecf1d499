"""vitalcast.web."""
