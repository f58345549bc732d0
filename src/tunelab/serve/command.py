"""`tunelab serve`: the command that starts the service (options, the data directory's lock, uvicorn)."""

from __future__ import annotations

import argparse
import fcntl
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError


def add_serve_command(sub: Any) -> None:
    serve = sub.add_parser("serve", help="the OpenAI fine-tuning API over tunelab, on this machine",
                           description="Serve OpenAI's Files, fine-tuning jobs, models and chat/completions APIs: the "
                                       "official openai SDK works with only base_url changed (docs/serve.md).")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs "
                                                          "API keys)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help="where files, jobs and the database live (default: <cache dir>/serve)")
    serve.add_argument("--keys", type=Path, default=None,
                       help="YAML file of API keys (keys: [{key: ..., org: ...}]); TUNELAB_API_KEYS adds more")
    serve.add_argument("--max-file-bytes", type=int, default=None, help="largest upload accepted (default 512 MiB)")
    serve.add_argument("--allow-python-graders", action="store_true",
                       help="run python graders (the caller's code, in a separate limited process); off by default")
    serve.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                       help="serve a local Hugging Face checkpoint under NAME as a base model (repeatable)")
    serve.add_argument("--max-loaded-models", type=int, default=4, help="models kept loaded for inference (LRU)")
    serve.add_argument("--max-loaded-adapters", type=_at_least_one, default=8,
                       help="LoRA adapters kept loaded in each base model for batched inference (LRU)")
    serve.add_argument("--max-batch", type=_at_least_one, default=8, help="requests decoded together in one batch")
    serve.add_argument("--batch-window-ms", type=float, default=20,
                       help="how long a batch waits for more requests before it starts")
    serve.add_argument("--job-nproc", type=_at_least_one, default=None, metavar="N",
                       help="processes each job's run uses on this machine, usually one per GPU (tunelab run --nproc "
                            "N through the same launcher); default: one process")
    serve.add_argument("--job-launcher", choices=("torchrun", "accelerate"), default="torchrun",
                       help="which engine starts a job's processes with --job-nproc (default torchrun)")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tunelab.models.registry import cache_dir
    from tunelab.serve.app import DEFAULT_MAX_FILE_BYTES, ServeOptions, create_app
    from tunelab.serve.auth import check_bind, load_keys

    keys = load_keys(args.keys)
    check_bind(args.host, keys)
    data_dir = (args.data_dir or cache_dir() / "serve").expanduser().resolve()
    lock = hold_data_dir(data_dir)
    options = ServeOptions(data_dir, keys, args.max_file_bytes or DEFAULT_MAX_FILE_BYTES, args.allow_python_graders,
                           args.max_loaded_models, _models(args.model),
                           batching={"max_adapters": args.max_loaded_adapters, "max_batch": args.max_batch,
                                     "window_s": args.batch_window_ms / 1000},
                           job_nproc=args.job_nproc, job_launcher=args.job_launcher)
    app = create_app(options)
    access = f"{len(keys)} API key(s)" if keys else "no API keys: open to this machine only"
    print(f"tunelab serve: http://{args.host}:{args.port}/v1  (data in {data_dir}; {access})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        lock.close()
    return 0


def hold_data_dir(data_dir: Path) -> Any:
    """One server per data directory: a second one would run each queued job twice."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / ".serve.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"serve: another tunelab serve uses {data_dir}; stop it or give --data-dir") from None
    return handle


def _at_least_one(text: str) -> int:
    """argparse's type for a count that must be a whole number of at least 1 (its error exits 2)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _models(items: list[str]) -> dict[str, Path]:
    found = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise ConfigError(f'--model "{item}": expected NAME=DIR with an existing model directory')
        found[name] = Path(path).resolve()
    return found
