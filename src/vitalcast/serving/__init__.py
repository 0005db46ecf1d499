"""vitalcast.serving."""
