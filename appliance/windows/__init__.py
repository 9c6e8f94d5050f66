"""Windows: faces and voice gathered over a window into an anonymous summary, the anger index and its alert."""
