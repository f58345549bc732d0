"""tunelab: fine-tune language models with evidence."""

import os

# tunelab never downloads: models are bundled or local directories. Set here, on import, so that a job worker
# or notebook calling `run()` is offline too (the Hugging Face libraries read it when they are imported); the
# loaders also pass local_files_only (models/loading.py) for a caller that imported them first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
