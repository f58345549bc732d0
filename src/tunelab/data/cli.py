"""`tunelab data ...` commands (check, prepare, leakage, synth): parse, call the data modules, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunelab.data.dedup import DEFAULT_THRESHOLD
from tunelab.data.formats import FORMATS
from tunelab.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check, clean, split and synthesize training data")
    data.set_defaults(handler=lambda args: data.print_help() or 2)
    cmds = data.add_subparsers(dest="data_command", metavar="COMMAND")
    _add_check(cmds)
    _add_prepare(cmds)
    _add_leakage(cmds)
    _add_synth(cmds)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="JSONL, CSV or Parquet file, or a datasets directory")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="row schema (default: detect)")
    p.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS",
                   help="map a field name, e.g. --column prompt=question (repeatable)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model whose tokenizer counts tokens")
    p.add_argument("--max-length", type=int, default=512, help="tokens per row in training (train.max_length)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"Jaccard similarity for near-duplicates (default {DEFAULT_THRESHOLD})")


def _columns(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_, sep, theirs) in zip(items, pairs) if not sep or not theirs]
    if bad:
        raise ConfigError(f'--column "{bad[0]}": expected OURS=THEIRS, e.g. prompt=question')
    return {ours: theirs for ours, _, theirs in pairs}


def _add_check(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser("check", help="validate every row; report problems, token lengths and duplicates",
                        description="Exit code 1 when any row is rejected; rejected rows and reasons go to a file.")
    _common(p)
    p.add_argument("--rejects", type=Path, help="where rejected rows go (default: FILE.rejects.jsonl beside FILE)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from tunelab.data.check import check_file, load_tokenizer, write_rejects

    report = check_file(args.file, load_tokenizer(args.model), args.format, _columns(args.column),
                        args.max_length, args.threshold)
    rejects = args.rejects or args.file.with_name(args.file.name + ".rejects.jsonl")
    if report.rejected:
        write_rejects(report, rejects)
    if args.json:
        listed = {"problems": _records(report.problems), "warnings": _records(report.warnings)}
        print(json.dumps({**report.summary(), **listed}, indent=2))
    else:
        for problem in sorted([*report.problems, *report.warnings], key=lambda p: p.line):
            print(problem.render(args.file))
        _print_check_summary(report, args.model, rejects)
    return 1 if report.rejected else 0


def _records(problems: list) -> list[dict]:
    return [{"line": p.line, "field": p.field, "kind": p.kind, "message": p.message} for p in problems]


def _print_check_summary(report, model: str, rejects: Path) -> None:
    s = report.summary()
    if s["problems_by_kind"]:
        print("\nproblems by kind:")
        for kind, n in sorted(s["problems_by_kind"].items(), key=lambda kn: -kn[1]):
            print(f"  {kind:<16} {n}")
    print(f"\n{s['rows']} rows ({s['format']}): {s['kept']} kept, {s['rejected']} rejected"
          + (f" -> {rejects}" if s["rejected"] else ""))
    t = s["tokens"]
    if t:
        print(f"tokens per row ({model}): min {t['min']}, median {t['median']:g}, p95 {t['p95']}, max {t['max']}")
    print(f"supervised part cut by max_length={s['max_length']}: {s['over_max_length']} row(s)")
    print(f"duplicates: {s['exact_duplicates']} exact, {s['near_duplicates']} near")
    print(f"empty or whitespace-only fields: {s['empty_targets']}; non-UTF-8 lines: {s['non_utf8']}")
    if s["ignored_keys"]:
        print("ignored keys (warnings; no row is rejected for one): "
              + ", ".join(f"{key} on {n} row(s)" for key, n in s["ignored_keys"].items()))
    if s["labels"]:
        total = sum(s["labels"].values())
        print("labels: " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} on {v} row{'s' * (v != 1)} ({v / total:.0%})"
                                     for k, v in sorted(s["labels"].items(), key=lambda kv: -kv[1])))


def _add_prepare(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser("prepare", help="clean, deduplicate and split into train/validation/test",
                        description="Writes DIR/{train,validation,test}.jsonl, rejects.jsonl, prepare_report.json "
                                    "and token_lengths.png.")
    _common(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory (new, or empty)")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test shares (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split")
    p.add_argument("--min-tokens", type=int, default=1, help="drop rows shorter than this many tokens")
    p.add_argument("--keep-near-duplicates", action="store_true",
                   help="keep near-duplicates (still kept on one side of the split); exact copies are always dropped")
    p.set_defaults(handler=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tunelab.data.check import load_tokenizer
    from tunelab.data.prepare import PrepareOptions, prepare

    options = PrepareOptions(fmt=args.format, columns=_columns(args.column), max_length=args.max_length,
                             min_tokens=args.min_tokens, threshold=args.threshold, shares=_shares(args.split),
                             seed=args.seed, drop_near=not args.keep_near_duplicates)
    report = prepare(args.file, args.output, load_tokenizer(args.model), options)
    dups = report["duplicates"]
    print(f"{report['rows_read']} rows read: {report['kept']} kept ({report['cleaned']} cleaned), {report['rejected']} "
          f"rejected ({report['invalid']} invalid or too long, {dups['exact']} exact and {dups['near']} near "
          f"duplicates) -> {args.output / 'rejects.jsonl'}")
    print("splits: " + ", ".join(f"{name} {n}" for name, n in report["splits"].items()))
    print(f"wrote {args.output}/ (train.jsonl, validation.jsonl, test.jsonl, rejects.jsonl, "
          f"prepare_report.json, token_lengths.png)")
    return 0


def _shares(text: str) -> tuple[float, float, float]:
    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or any(s < 0 for s in shares) or abs(sum(shares) - 1) > 1e-6 or shares[0] == 0:
        raise ConfigError(f'--split "{text}": expected three shares train,validation,test that add up to 1')
    return shares


def _add_leakage(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser("leakage", help="list held-out rows that repeat train rows (what `tunelab run` checks)")
    p.add_argument("train", type=Path, help="training file")
    p.add_argument("held_out", type=Path, help="eval or test file")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="row schema (default: detect)")
    p.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS",
                   help="map a field name, e.g. --column prompt=question (repeatable)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="Jaccard for near-copies")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_leakage)


def _cmd_leakage(args: argparse.Namespace) -> int:
    from tunelab.data.leakage import find_leaks
    from tunelab.data.loading import load_dataset

    columns = _columns(args.column)
    train = load_dataset(args.train, args.format, columns)
    held = load_dataset(args.held_out, train.format, columns)
    report = find_leaks(train, held, args.threshold)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            print(line)
        print(f"{len(report.leaks)} of {report.held_rows} held-out rows ({report.share:.1%}) repeat a train row "
              f"(exact or Jaccard >= {args.threshold})")
    return 1 if report.leaks else 0


def _add_synth(cmds: argparse._SubParsersAction) -> None:
    p = cmds.add_parser("synth", help="expand seed examples into more rows with a teacher model")
    p.add_argument("--seed-file", type=Path, required=True, help="a few example rows (any supported file)")
    p.add_argument("--n", type=int, required=True, help="rows to generate")
    p.add_argument("--teacher", default=DEFAULT_MODEL,
                   help="a bundled alias or local model dir, or the model name at --base-url")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL file for the new rows")
    p.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable that holds the API key")
    p.add_argument("--held-out", type=Path, help="drop generated rows that repeat rows of this eval/test file")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per generated field")
    p.add_argument("--temperature", type=float, default=0.9, help="sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling and example-choice seed")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="Jaccard for near-duplicates")
    p.set_defaults(handler=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from tunelab.data.synth import SynthOptions, synthesize
    from tunelab.data.teachers import make_teacher

    teacher = make_teacher(args.teacher, args.base_url, args.api_key_env)
    options = SynthOptions(n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed, threshold=args.threshold)
    result = synthesize(args.seed_file, teacher, args.output, options, held_out=args.held_out)
    print(f"wrote {result.kept} rows to {args.output} (provenance: {result.provenance_path}); "
          f"dropped {result.dropped_invalid} invalid, {result.dropped_duplicates} duplicate, "
          f"{result.dropped_leaks} leaking generation(s) in {result.attempts} attempt(s)")
    return 0 if result.kept >= args.n else 1
