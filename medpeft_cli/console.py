"""Where the CLI writes: the stdout and stderr consoles and the tables, made in this one place.

On a terminal, output fits its width: a table column is never cut with "…"; a cell too long for its
column continues on the next line (free text at a space, a name or number only when it cannot fit
whole). Anywhere else (a pipe, a file, a Slurm or CI log) nothing is fitted to a width, whatever
COLUMNS or the terminal that started the command says: lines are never wrapped and tables take the
width their content needs, so every name, number and path stays whole and greppable.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

# The width given to a console that is not a terminal: wider than any line medpeft prints.
UNBOUNDED = 100_000


def make_console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): no highlighting of numbers, long lines left whole
    (the terminal wraps them, so a wrapped path still copies as one), no width when not a terminal."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = UNBOUNDED
    return console


out = make_console()
err = make_console(stderr=True)


def new_table(*columns: str, title: str | None = None, right: Iterable[str] = ()) -> Table:
    """A table with these columns (`right`: right-justified, for numbers) whose cells are never cut:
    on a narrow terminal they fold onto more lines instead of ending in "…"."""
    table = Table(title=title, title_justify="left")
    right = set(right)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table
