"""The technician's and fleet's tools: bench, compare, doctor, eval (faces, voice, video, sessions), watch, notice."""
