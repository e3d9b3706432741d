"""`medpeft report`: the store's runs and published results -> the live site, and optionally a release.

    build_from_store(db, out_dir, ..., release=None, releases_dir=Path("releases"))

reads the runs (store/results.py) and the published results (reference/store.py) of one DuckDB file,
writes the release first when one is asked for (report/release.py; an existing release is refused before
anything is read), then the live site, which links every release under `releases_dir`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli.report.release import check_new, list_releases, write_release
from medpeft_cli.report.render import check_base_url, render_site

DEFAULT_RELEASES = Path("releases")


@dataclass
class Built:
    index: Path
    runs: int
    references: int
    release: Path | None = None


def build_from_store(
    db: str | Path,
    out_dir: str | Path,
    title: str = "medpeft leaderboard",
    *,
    methods: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
    runs_dir: str | Path | None = None,
    base_url: str | None = None,
    release: str | None = None,
    releases_dir: str | Path | None = DEFAULT_RELEASES,
) -> Built:
    from medpeft_cli.reference.store import load as load_references
    from medpeft_cli.store.results import query

    base_url = check_base_url(base_url)
    if release is not None:
        check_new(Path(releases_dir or DEFAULT_RELEASES), release)
    rows = query(db)
    references = load_references(Path(db))
    options = {"title": title, "db_label": str(db), "methods": methods, "runs_dir": runs_dir, "references": references}
    made = None
    if release is not None:
        info = {"runs": len(rows), "db": str(db), "title": title}
        release_url = f"{base_url}releases/{release}/" if base_url else None

        def build(folder: Path) -> None:
            render_site(rows, folder, base_url=release_url, release={"name": release}, **options)

        made = write_release(Path(releases_dir or DEFAULT_RELEASES), release, build, info, references)
    index = render_site(rows, out_dir, base_url=base_url, releases=list_releases(releases_dir), **options)
    return Built(index, len(rows), len(references), made)
