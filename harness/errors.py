"""Errors a user can act on. The CLI turns them into a message and exit code 2."""

from __future__ import annotations


class HarnessError(Exception):
    """A problem with the user's input: config, names, files. Never a bug in the harness."""


class ConfigError(HarnessError):
    """An experiment file that cannot be used, with the file and the offending key named."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid experiment file {path}:\n{lines}")


class UnknownNameError(HarnessError, ValueError):
    """A precision, adapter, workload or model name the harness does not know."""

    def __init__(self, kind: str, name: str, allowed: list[str]):
        self.kind, self.name, self.allowed = kind, name, allowed
        super().__init__(f"unknown {kind} '{name}'; allowed: {', '.join(allowed)}")


class SkipCell(Exception):
    """A cell that cannot run here (e.g. tf32 without Ampere); recorded as skipped."""
