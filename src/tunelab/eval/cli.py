"""`tunelab eval ...`: re-evaluate a saved run or model on any data."""

from __future__ import annotations

import argparse


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    del sub  # `tunelab eval` arrives with the evidence issue
