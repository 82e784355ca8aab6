"""Argument checks for the `vl2spike` commands: one-line errors, bounded numbers, writable outputs.

argparse's own error prints a usage block and a traceback-free but multi-line message; a user fixing
a typo wants one line naming the option and what it takes (the usage stays in `--help`). Every size
option is bounded, so `--sequence-length 99999999999` is refused here instead of by the kernel's
out-of-memory killer.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from vl2spike_ros.errors import InputError


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2; sub-parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
        sys.exit(2)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text[:40]}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def bounded_float(low: float, high: float, low_inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (or (low, high] with low_inclusive=False)."""
    interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text[:40]!r}") from None
        above_low = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above_low and value <= high):
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text[:40]}")
        return value

    parse.__name__ = "number"
    return parse


def require_writable_folder(path: Path, what: str) -> None:
    """Refuse, before any work, an output whose folder (or nearest existing ancestor) cannot be written."""
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: folder {existing} is not writable (read-only or no permission)")
