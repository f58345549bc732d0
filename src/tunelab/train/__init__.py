"""The run: trainer wiring, progress events, checkpoints and the run directory."""
