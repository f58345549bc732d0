"""Take a tuned model to where it runs: adapter, merged checkpoint or GGUF, each reloaded and verified against
the run's model; and the models to chat with (several adapters over one base)."""
