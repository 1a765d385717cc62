"""Command line: ``harness run | show | report | claims | predict | list | env``.

Each command is a thin typer wrapper over its body in ``harness/commands/``. User errors (bad
config, unknown names, missing models) print one clear message and exit 2 before anything is
written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from harness.errors import HarnessError

app = typer.Typer(
    help="Benchmark LLM quantization schemes and LoRA adapters: memory, speed, accuracy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" and "harness[ray]" stay
)
# Pipes and CI logs get a wide console rather than rich's 80-column default, so tables stay whole.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True) if Console().is_terminal else Console(stderr=True, width=160)


def fail(exc: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[
        Path | None, typer.Option(help="Results directory [default: results/NAME].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda [default: from file].")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rerun cells that already have a result.")] = False,
    only: Annotated[
        str | None, typer.Option(help="Run only cells whose id matches this glob.")
    ] = None,
    launcher: Annotated[
        str,
        typer.Option(
            help="local: one cell at a time on this machine. ray: cells as concurrent Ray "
            "tasks on a cluster (pip install 'harness[ray]')."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join (auto, ray://host:10001) [default: the current one, "
            "else a new one on this machine]."
        ),
    ] = None,
    cpus_per_cell: Annotated[
        int, typer.Option(help="With --launcher ray: cores (and torch threads) per cell.")
    ] = 1,
) -> None:
    """Run every cell of an experiment matrix, each in its own process, and collect the table."""
    from harness.commands.run import Launch, run_experiment

    try:
        launch = Launch(launcher, ray_address, cpus_per_cell)
        run_experiment(
            experiment,
            out=out,
            device=device,
            force=force,
            only=only,
            launch=launch,
            console=console,
        )
    except HarnessError as exc:
        fail(exc)


@app.command("list")
def list_() -> None:
    """Precisions, models and workloads the harness knows, with one-line descriptions."""
    from harness.commands.listing import print_listing

    print_listing(console)


@app.command()
def env(
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Device, memory, library versions and git sha as they will be recorded with results."""
    from harness.config import resolve_device
    from harness.measure.env import collect

    if device not in ("auto", "cpu", "cuda"):
        fail(HarnessError(f"unknown device '{device}'; allowed: auto, cpu, cuda"))
    info: dict[str, Any] = collect(resolve_device(device))
    width = max(map(len, info))
    for key, value in info.items():
        console.print(f"{key:<{width}}  {value}", highlight=False)


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="Results directories (one or more).")],
    out: Annotated[
        Path | None, typer.Option(help="Report directory [default: reports/NAME].")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Label of each results directory, in order.")
    ] = None,
    claims: Annotated[
        Path | None, typer.Option(help="Claims registry [default: experiments/claims.yaml].")
    ] = None,
) -> None:
    """Markdown and HTML report with figures, claims, failed cells and environment."""
    from harness.commands.report import make_report

    try:
        make_report(results, out=out, labels=label or None, claims=claims, console=console)
    except HarnessError as exc:
        fail(exc)


@app.command("claims")
def claims_(
    results: Annotated[list[Path], typer.Argument(help="Results directories (one or more).")],
    registry: Annotated[
        Path | None, typer.Option(help="Claims registry [default: experiments/claims.yaml].")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Label of each results directory, in order.")
    ] = None,
) -> None:
    """Each published claim: reproduced, not reproduced or not measured, with the numbers."""
    from harness.commands.claims import check_claims

    try:
        check_claims(results, registry=registry, labels=label or None, console=console)
    except HarnessError as exc:
        fail(exc)


@app.command()
def predict(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
) -> None:
    """Predicted memory of every cell from the model config alone (no weights loaded)."""
    from harness.commands.predict import predict_experiment

    try:
        predict_experiment(experiment, console=console)
    except HarnessError as exc:
        fail(exc)


@app.command()
def show(
    results: Annotated[Path, typer.Argument(help="A results directory (results/NAME).")],
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table.")] = False,
) -> None:
    """The summary table of a results directory, without running anything."""
    from harness.results import load_table
    from harness.summary import markdown_table, summary_table

    try:
        frame = load_table(results)
    except HarnessError as exc:
        fail(exc)
    if markdown:
        print(markdown_table(frame))
    else:
        console.print(summary_table(frame, results.name))


def main() -> None:  # pragma: no cover
    app(prog_name="harness")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
