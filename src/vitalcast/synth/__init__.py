"""vitalcast.synth."""
