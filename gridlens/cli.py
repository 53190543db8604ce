"""The `gridlens` command. Subcommand groups live in their packages' `commands` modules and are
loaded lazily, so `gridlens --help` stays fast and one broken extra never breaks the rest."""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import traceback

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
    "graph": "gridlens.graphs.commands:graph",
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


_DEBUG = {"on": False}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gridlens")
@click.option("--debug", is_flag=True, help="Show the full traceback of any error.")
def cli(debug: bool) -> None:
    """gridlens: interpretability workbench for Fleuret's culture GPTs."""
    _DEBUG["on"] = debug


def _fail(message: str, code: int = 2) -> None:
    """Print `message` as one line (the traceback too under --debug) and exit with `code`."""
    if _DEBUG["on"]:
        traceback.print_exc()
    click.echo(" ".join(message.split()), err=True)
    sys.exit(code)


def _os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"gridlens: error: {where}{error.strerror or error}"


def _suggestion(error: click.UsageError) -> str:
    """' Did you mean ...?' for a mistyped subcommand of any group (`gridlens reprot`): click
    suggests nothing for the lazily loaded top level, nor at all before click 8.4."""
    message = error.format_message()
    unknown = re.match(r"No such command '(.+)'\.$", message)
    group = error.ctx.command if error.ctx else None
    if unknown is None or not isinstance(group, click.Group):
        return ""
    close = difflib.get_close_matches(unknown[1], group.list_commands(error.ctx), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; an unexpected error prints one line
    and a hint to rerun with --debug, which shows its traceback."""
    _DEBUG["on"] = False
    try:
        cli.main(args=argv, standalone_mode=False)
    except GridlensError as error:
        _fail(f"gridlens: error: {error}")
    except OSError as error:  # a file or folder the user named cannot be read or written
        _fail(_os_error(error))
    except MemoryError:
        _fail("gridlens: error: out of memory (ask for fewer quizzes, steps or a smaller batch)")
    except click.exceptions.Abort:
        click.echo("gridlens: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        message = error.format_message() + _suggestion(error)
        click.echo(f"gridlens: error: {message}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as error:
        _fail(f"gridlens: error: {error.format_message()}", error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # a bug: one line, the traceback only with --debug
        detail = (str(error).splitlines() or [""])[0][:300]
        _fail(
            f"gridlens: internal error: {type(error).__name__}: {detail} "
            "(rerun with `gridlens --debug ...` to see the traceback)",
            code=1,
        )


if __name__ == "__main__":
    main()
