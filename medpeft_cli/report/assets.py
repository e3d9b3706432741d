"""Where the site's templates and stylesheet live (the `leaderboard/` folder, shipped as package data)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from medpeft_cli.errors import UserError


def leaderboard_dir() -> Path:
    """The folder holding `templates/` and `static/`, found through medpeft_cli/resources/leaderboard."""
    root = files("medpeft_cli") / "resources" / "leaderboard"
    path = Path(str(root))
    if not (path / "templates").is_dir() or not (path / "static").is_dir():
        raise UserError(f"the leaderboard templates are missing ({path}); reinstall medpeft")
    return path


def templates_dir() -> Path:
    return leaderboard_dir() / "templates"


def static_dir() -> Path:
    return leaderboard_dir() / "static"
