"""Folders written whole or not at all: filled under a temporary name, then renamed into place."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medpeft_cli.errors import UserError


@contextmanager
def staged(tmp: Path, failure: Callable[[str], str]) -> Iterator[Path]:
    """Yield `tmp`, the temporary folder the block fills and renames into place. If the block fails, `tmp`
    is removed; an OSError becomes one UserError line, `failure(reason)`, anything else is re-raised."""
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(failure(exc.strerror or str(exc))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
