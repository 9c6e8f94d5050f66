"""Hardware or recordings in, timestamped frames out, through small ring buffers that never block the loop."""
