"""vitalcast.features."""
