"""Operator commands (jobs, history, pause, ...): registered on the control.py parser."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator commands to `sub`."""
