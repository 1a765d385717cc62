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
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" and "...[ray]" stay
)
# Pipes and CI logs get a wide console rather than rich's 80-column default, so tables stay whole.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True) if Console().is_terminal else Console(stderr=True, width=160)


def fail(exc: Exception) -> None:
    """One line naming the problem (a file-system error names its path), then exit 2."""
    if isinstance(exc, OSError) and not isinstance(exc, HarnessError):
        where = exc.filename or "a results file"
        exc = f"cannot use {where}: {exc.strerror or exc}"  # type: ignore[assignment]
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(2)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[
        Path | None, typer.Option(help="Results directory [default: ./results/NAME].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda [default: from file].")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rerun cells that already have a result.")] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(help="Rerun cells stored as error, oom or timeout; keep ok and skipped."),
    ] = False,
    keep_foreign: Annotated[
        bool,
        typer.Option(
            help="Reuse stored cells measured in another environment (other CPU/GPU, "
            "library versions or harness code) instead of measuring them again; "
            "they are listed as such."
        ),
    ] = False,
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
    """Run every cell of an experiment matrix, each in its own process, and collect the table.

    On CPU a cell may run a capped budget (fewer tokens and items): when its 16-bit dtype is
    emulated by this CPU, or when the experiment sets cell_target_s and the cell's workloads
    are projected to take longer. Its budget.capped row says why; HARNESS_FULL_BUDGET=1 runs
    every cell on the budget as written.

    Exit codes: 0 every cell ok or skipped; 2 bad input; 3 some cell ended error, oom or
    timeout; 128+N interrupted by signal N (130 Ctrl-C, 143 SIGTERM), running cells ended.
    """
    from harness.commands.run import EXIT_FAILED_CELLS, Launch, run_experiment
    from harness.runner.isolation import Interrupted, interrupts_raise

    try:
        launch = Launch(launcher, ray_address, cpus_per_cell)
        with interrupts_raise():  # also while the table is collected: one exit code per signal
            result = run_experiment(
                experiment,
                out=out,
                device=device,
                force=force,
                retry_failed=retry_failed,
                keep_foreign=keep_foreign,
                only=only,
                launch=launch,
                console=console,
            )
    except (HarnessError, OSError) as exc:
        fail(exc)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else 2
        err_console.print(
            "[bold red]interrupted:[/] the running cells were stopped; finished cells are "
            "stored and the next run resumes from them",
            highlight=False,
        )
        raise typer.Exit(128 + signum) from None
    if result.failed:
        raise typer.Exit(EXIT_FAILED_CELLS)


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

    try:
        info: dict[str, Any] = collect(resolve_device(device))
    except (HarnessError, OSError) as exc:
        fail(exc)
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
    except (HarnessError, OSError) as exc:
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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the verdicts as JSON instead of tables.")
    ] = False,
) -> None:
    """One verdict per published claim from all the directories given (reproduced, not
    reproduced, undecided), with the numbers and the cells used; claims none of them measured
    are listed in one line."""
    from harness.commands.claims import check_claims

    try:
        check_claims(results, registry=registry, labels=label or None, console=console,
                     as_json=as_json)
    except (HarnessError, OSError) as exc:
        fail(exc)


@app.command()
def predict(
    experiment: Annotated[
        Path | None, typer.Argument(help="Experiment YAML file (or use --model).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Instead of an experiment: a preset (llama-7b, llama-13b, llama-33b, "
                     "llama-65b, llama-70b, smollm2-135m), builtin:/synthetic: model or a local "
                     "directory with config.json."),
    ] = None,
    precision: Annotated[list[str] | None, typer.Option(help="With --model; repeatable.")] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="With --model: none, full, lora-rN, rslora-rN (rank-stabilised "
                     "scale, same memory as lora-rN) or dora-rN (DoRA: adds a magnitude per "
                     "output row and a larger forward); repeatable."),
    ] = None,
    batch: Annotated[int, typer.Option(help="Inference batch.")] = 1,
    seq: Annotated[int, typer.Option(help="Inference tokens (prompt + new).")] = 160,
    train_batch: Annotated[int, typer.Option(help="Training batch.")] = 1,
    train_seq: Annotated[int, typer.Option(help="Training tokens per sequence.")] = 512,
    checkpointing: Annotated[bool, typer.Option(help="Gradient checkpointing.")] = False,
    optimizer: Annotated[
        str, typer.Option(help="adamw, paged_adamw_32bit or paged_adamw_8bit.")
    ] = "adamw",
    lora_dropout: Annotated[
        float, typer.Option(help="Adapter dropout (as the experiment's lora.dropout); with "
                            "dropout peft's DoRA saves each adapted weight in fp32 for backward.")
    ] = 0.05,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the predicted rows as JSON instead of a table.")
    ] = False,
) -> None:
    """Predicted memory from the model config alone: no weights loaded, no network.

    Either every cell of an experiment, or one --model under each --precision and --adapter,
    e.g. `harness predict --model llama-65b --precision nf4-dq --adapter lora-r64
    --adapter dora-r64 --train-batch 4 --train-seq 528 --checkpointing`.
    """
    import os

    from harness import memory_model as mm
    from harness.commands.predict import predict_experiment, predict_setting

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a config that is not here fails at once
    shown = _quiet() if as_json else console
    try:
        if (experiment is None) == (model is None):
            raise HarnessError("give either an experiment file or --model (not both)")
        if experiment is not None:
            _maybe_json(predict_experiment(experiment, console=shown), as_json)
            return
        if optimizer not in ("adamw", "paged_adamw_32bit", "paged_adamw_8bit"):
            raise HarnessError(f"unknown optimizer {optimizer!r}; allowed: adamw, "
                               "paged_adamw_32bit, paged_adamw_8bit")
        if not 0.0 <= lora_dropout < 1.0:
            raise HarnessError(f"--lora-dropout must be in [0, 1), not {lora_dropout}")
        work = mm.Workload(batch=batch, seq=seq, train_batch=train_batch, train_seq=train_seq,
                           checkpointing=checkpointing, optimizer=optimizer,
                           lora_dropout=lora_dropout)
        rows = predict_setting(model, precision or ["fp16"], adapter or ["none"], work,
                               console=shown)
        _maybe_json(rows, as_json)
    except (HarnessError, OSError) as exc:
        fail(exc)


@app.command()
def show(
    results: Annotated[Path, typer.Argument(help="A results directory (results/NAME).")],
    markdown: Annotated[bool, typer.Option(help="Print a Markdown table.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per cell (the summary's "
                           "columns) instead of a table.")
    ] = False,
    reference: Annotated[
        Path | None, typer.Option(help="Another results directory (e.g. the committed "
                                  "results/default) to show beside these: yours / reference "
                                  "(ratio) per cell, and how the environments differ.")
    ] = None,
) -> None:
    """The summary table of a results directory, without running anything.

    Cells measured in another environment than this machine's are listed under the table.
    """
    from harness.commands.show import foreign_note
    from harness.results import load_table
    from harness.summary import markdown_table, summary_table, wide

    try:
        frame = load_table(results)
    except (HarnessError, OSError) as exc:
        fail(exc)
    if as_json:
        print(wide(frame).to_json(orient="records", indent=1))
        return
    if markdown:
        print(markdown_table(frame))
    else:
        console.print(summary_table(frame, results.name))
    note = foreign_note(results)
    if note:
        console.print(note, highlight=False, markup=False)
    if reference is not None:
        _show_beside(results, reference)


def _show_beside(results: Path, reference: Path) -> None:
    from rich.table import Table

    from harness.commands.show import beside_reference

    try:
        table, env = beside_reference(results, reference)
    except (HarnessError, OSError) as exc:
        fail(exc)
    shown = Table(title=f"{results} beside {reference}: yours / reference (ratio)")
    for column in table.columns:
        shown.add_column(str(column))
    for row in table.itertuples(index=False):
        shown.add_row(*(str(v) for v in row))
    console.print(shown if len(table) else f"no cell of {results} is also in {reference}")
    if env:
        console.print("Environment (reference, here yours): " + "; ".join(env),
                      highlight=False, markup=False)


def _quiet() -> Console:
    """A console that prints nowhere (``--json`` replaces the tables)."""
    import io

    return Console(file=io.StringIO())


def _maybe_json(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(rows, indent=1, default=str))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"harness {version('harness')}")
        except PackageNotFoundError:
            print("harness (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True,
                     help="Print the version and exit."),
    ] = None,
) -> None:
    """Benchmark LLM quantization schemes and LoRA adapters: memory, speed, accuracy."""


def main() -> None:  # pragma: no cover
    app(prog_name="harness")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
