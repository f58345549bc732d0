"""`tunelab data ...` commands (check, prepare, leakage, synth)."""

from __future__ import annotations

import argparse


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="check, clean, split and synthesize training data")
    data.set_defaults(handler=lambda args: data.print_help() or 2)
