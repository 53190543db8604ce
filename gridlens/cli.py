"""The `gridlens` command. Subcommand groups live in their packages' `commands` modules and are
loaded lazily, so `gridlens --help` stays fast and one broken extra never breaks the rest."""

from __future__ import annotations

import importlib
import sys

import click

from gridlens.errors import GridlensError

SUBCOMMANDS: dict[str, str] = {
    "world": "gridlens.world.commands:world",
    "groundtruth": "gridlens.groundtruth.commands:groundtruth",
    "model": "gridlens.models.commands:model",
    "train": "gridlens.training.commands:train",
    "eval": "gridlens.training.commands:eval_command",
    "report": "gridlens.report.commands:report",
    "analyze": "gridlens.analysis.commands:analyze",
    "culture": "gridlens.training.culture.commands:culture",
    "sae": "gridlens.sae.commands:sae",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attribute = SUBCOMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gridlens")
def cli() -> None:
    """gridlens: interpretability workbench for Fleuret's culture GPTs."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except GridlensError as error:
        click.echo(f"gridlens: error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("gridlens: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        click.echo(f"gridlens: error: {error.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)


if __name__ == "__main__":
    main()
