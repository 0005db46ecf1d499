"""vitalcast.ingest."""
