"""How a `medpeft` process ends: every outcome becomes its exit code and at most one line on stderr.

    a MedpeftError (errors.py)     its line (`medpeft: error: ...`) and code (2, 3, 75)
    Ctrl-C (KeyboardInterrupt)     `medpeft: interrupted; ...` and 130 (errors.Interrupted)
    a usage error (unknown option, `medpeft: error: <Click's message> (see `medpeft CMD --help`)` and 2
    a value of the wrong type)
    a crash                        the traceback and 1

docs/reliability.md, "Exit codes", is the table users read.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from medpeft_cli.errors import Interrupted, MedpeftError, UserError

try:  # Typer >= 0.20 vendors Click; before, it uses Click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click.exceptions import ClickException, UsageError


class Group(TyperGroup):
    """The root command group: Ctrl-C inside any command becomes `Interrupted` (one line, exit 130)
    instead of Typer's silent exit; a run's own RunInterrupted says where its checkpoint is. Command
    lists in `--help` show each command's first paragraph whole (Click would cut it with "...")."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _whole_short_help(self)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise Interrupted.of(exc) from None


def _whole_short_help(group: Any) -> None:
    for command in (getattr(group, "commands", None) or {}).values():
        if not command.short_help and command.help:
            command.short_help = " ".join(command.help.strip().split("\n\n")[0].split())
        _whole_short_help(command)


def run(app: typer.Typer, argv: list[str] | None) -> None:
    """Run the app on `argv` and end the way the table above says (returns on success)."""
    try:
        code = app(args=argv, prog_name="medpeft", standalone_mode=False)
    except MedpeftError as exc:
        _fail(exc)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `medpeft` or `medpeft GROUP` alone: the help, as Click does
            exc.show()
            sys.exit(exc.exit_code)
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(UserError(exc.format_message().rstrip(".") + hint), exc.exit_code)
    except ClickException as exc:
        _fail(UserError(exc.format_message()), exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        _fail(Interrupted(""))
    if isinstance(code, int) and code != 0:  # typer.Exit(code) inside a command
        sys.exit(code)


def _fail(exc: MedpeftError, code: int | None = None) -> None:
    from medpeft_cli.sweep.launch import record_outcome

    print(exc.line(), file=sys.stderr)
    code = exc.exit_code if code is None else code
    record_outcome(code)  # in a process of `--num-processes N`: for the launching process
    sys.exit(code)
