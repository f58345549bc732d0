"""`tunelab export RUN_DIR --format adapter|merged|gguf -o OUT` and `tunelab chat TARGET`: thin layers over
`tunelab.export.build` and `tunelab.export.pool`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunelab.export.build import FORMATS


def add_export_commands(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("export", help="write a run's tuned model as an adapter, a merged checkpoint or GGUF",
                         description="Export a finished run, reload the artifact and verify it against the run's "
                                     "model on the run's held-out rows (figures in OUT/verification.json).")
    cmd.add_argument("run_dir", help="a finished run directory")
    cmd.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    cmd.add_argument("-o", "--out", required=True, help="output directory (must not exist, or be empty)")
    cmd.add_argument("--quant", default="f16",
                     help="gguf file types, comma-separated: f32, f16, q8_0 (default f16); one file each")
    cmd.add_argument("--rows", type=int, default=16, help="held-out rows to verify on (default 16)")
    cmd.set_defaults(handler=_cmd_export)

    chat = sub.add_parser("chat", help="talk to a run, an export or a model through its chat template",
                          description="One-shot with -p, else interactive (/use NAME switches adapter, /quit ends).")
    chat.add_argument("target", nargs="?", help="run dir, export dir (adapter, merged or gguf), alias or HF dir")
    chat.add_argument("-p", "--prompt", help="one message; print the streamed reply and exit")
    chat.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR",
                      help="load this run's adapter over the shared base (repeatable); /use NAME switches")
    chat.add_argument("--system", help="a system message first")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    chat.set_defaults(handler=_cmd_chat)


def _cmd_export(args: argparse.Namespace) -> int:
    from tunelab.cli_output import ConsoleProgress
    from tunelab.export.build import export_run

    quants = tuple(q.strip() for q in args.quant.split(",") if q.strip())
    console = ConsoleProgress()
    try:
        export_run(Path(args.run_dir), args.fmt, Path(args.out), quants, args.rows, on_event=console)
    finally:
        console.close()
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from tunelab.errors import ConfigError
    from tunelab.export.pool import AdapterSet, load_target, parse_adapters, stream_reply

    if not args.target and not args.adapter:
        raise ConfigError("chat: what to talk to? give a TARGET (a run directory, an export, a model alias or a "
                          "Hugging Face directory) or --adapter NAME=RUN_DIR, e.g. tunelab chat runs/x -p Hi")
    if args.target and args.adapter:
        raise ConfigError("chat: give a TARGET or one or more --adapter NAME=RUN_DIR, not both")
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError("chat: -p is empty or whitespace only; give the message to send")
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.adapter:
        pool = AdapterSet(parse_adapters(args.adapter))
        reply = lambda messages: pool.generate(messages, **options)  # noqa: E731
    else:
        pool = None
        tokenizer, model = load_target(args.target)
        reply = lambda messages: stream_reply(model, tokenizer, messages, **options)  # noqa: E731
    history = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        _answer(reply, [*history, {"role": "user", "content": args.prompt}])
        return 0
    return _interactive(reply, history, pool)


def _answer(reply, messages: list[dict[str, str]]) -> str:
    pieces = []
    for piece in reply(messages):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print()
    return "".join(pieces)


def _interactive(reply, history: list[dict[str, str]], pool) -> int:
    from tunelab.errors import ConfigError

    names = f" adapters: {', '.join(pool.names)}, base; /use NAME switches." if pool else ""
    print(f"chat: /quit ends, /reset clears the conversation.{names}", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = [m for m in history if m["role"] == "system"]
        elif line.startswith("/use "):
            try:
                if pool is None:
                    raise ConfigError("/use needs adapters: start chat with --adapter NAME=RUN_DIR")
                pool.use(line[5:].strip())
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
        elif line:
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": _answer(reply, history)})
