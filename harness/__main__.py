"""``python -m harness``: the command line without an installed entry point."""

from harness.cli import app

app(prog_name="harness")
