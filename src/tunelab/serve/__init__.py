"""`tunelab serve`: the OpenAI fine-tuning API over tunelab's own commands, on the user's machine.

Files, fine-tuning jobs, models and chat/completions in OpenAI's shapes (the pinned `openai` SDK parses every
answer), kept in a durable store (SQLite in WAL mode, files written atomically) under a data directory. A job
is a normal `tunelab run` started as a subprocess and observed through its run directory; inference goes
through one small interface (`serve.inference.Engine`). docs/serve.md describes it.
"""
