"""vitalcast.clinical."""
