"""`medpeft report --release NAME` (issue 19): an immutable, versioned copy of the site and its data,
never rebuilt; the live site links (and carries) every release. Hand-made store rows, no training."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
from synthetic_results import synthetic_rows

from medpeft_cli.store.results import append


def make_store(tmp_path: Path, n: int = 12) -> list[dict]:
    rows = synthetic_rows(backbones=("vit_base_patch16_224",), datasets=("demo-derm", "demo-xray"), methods=("full", "lora"), fractions=(1.0,), seeds=(0, 1, 2), limit=n)
    for row in rows:
        append(tmp_path / "s.duckdb", row)
    (tmp_path / "pub.csv").write_text("table,backbone,dataset,method,f1,plus_minus_as_printed\nT1,vit_base_patch16_224 (ImageNet-21k),demo-derm,lora,0.7,1.0\n", encoding="utf-8")
    return rows


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_release_is_a_frozen_copy_with_its_data_and_checksums(cli, tmp_path):
    rows = make_store(tmp_path)
    assert cli("reference", "import", "pub.csv", "--source", "Lab P", "--db", "s.duckdb").code == 0
    result = cli("report", "--db", "s.duckdb", "--out", "site", "--release", "2026-01")
    assert result.code == 0, result.stderr
    assert "release: releases/2026-01 (immutable; checksums in releases/2026-01/SHA256SUMS)" in result.stdout
    rel = tmp_path / "releases" / "2026-01"
    for name in ("index.html", "results.parquet", "results.csv", "results.json", "summary.csv", "references.csv", "references.json", "release.json", "SHA256SUMS"):
        assert (rel / name).is_file(), name
    assert not (rel / ".medpeft-site").exists()  # no site marker: `report --out` may never replace it
    info = json.loads((rel / "release.json").read_text())
    assert (info["name"], info["runs"], info["sources"], info["references"]) == ("2026-01", len(rows), ["Lab P"], 1)
    with open(rel / "results.csv", encoding="utf-8") as fh:
        assert sorted(r["run_key"] for r in csv.DictReader(fh)) == sorted(r["run_key"] for r in rows)
    with open(rel / "references.csv", encoding="utf-8") as fh:
        (ref,) = list(csv.DictReader(fh))
    assert (ref["source"], ref["value_text"], ref["plus_minus"], ref["medpeft_method"]) == ("Lab P", "0.7", "1.0", "lora")
    sums = dict(reversed(line.split("  ", 1)) for line in (rel / "SHA256SUMS").read_text().splitlines())
    files = digests(rel)
    assert sums == {k: v for k, v in files.items() if k != "SHA256SUMS"} and len(sums) > 20
    assert all((rel / name).stat().st_mode & 0o222 == 0 for name in sums)  # read-only files
    assert "Release <strong>2026-01</strong>: a frozen copy" in (rel / "index.html").read_text()
    live = (tmp_path / "site" / "index.html").read_text()
    assert 'href="releases/2026-01/index.html"' in live and "a frozen copy of the leaderboard" not in live
    assert digests(tmp_path / "site" / "releases" / "2026-01") == files  # the live site carries the release


def test_a_release_is_never_rebuilt_and_later_ones_leave_it_alone(cli, tmp_path):
    rows = make_store(tmp_path, n=6)
    assert cli("report", "--db", "s.duckdb", "--out", "site", "--release", "v1").code == 0
    before = digests(tmp_path / "releases" / "v1")
    append(tmp_path / "s.duckdb", {**rows[0], "run_key": "one-more", "seed": 9})
    again = cli("report", "--db", "s.duckdb", "--out", "site", "--release", "v1")
    assert again.code == 2
    assert again.stderr.strip() == "medpeft: error: release v1 already exists at releases/v1; a release is never rebuilt: choose a new name"
    overwrite = cli("report", "--db", "s.duckdb", "--out", "releases/v1")
    assert overwrite.code == 2 and "holds no medpeft site" in overwrite.stderr
    assert digests(tmp_path / "releases" / "v1") == before
    assert cli("report", "--db", "s.duckdb", "--out", "site", "--release", "v2").code == 0
    assert digests(tmp_path / "releases" / "v1") == before
    assert json.loads((tmp_path / "releases" / "v2" / "release.json").read_text())["runs"] == len(rows) + 1
    live = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r'href="releases/v2/index\.html".*href="releases/v1/index\.html"', live, re.S)  # newest first
    plain = cli("report", "--db", "s.duckdb", "--out", "site")  # a build without --release still links both
    assert plain.code == 0 and 'href="releases/v1/index.html"' in (tmp_path / "site" / "index.html").read_text()
    assert sorted(p.name for p in (tmp_path / "site" / "releases").iterdir()) == ["v1", "v2"]


@pytest.mark.parametrize("name", ["../up", ".hidden", "a/b", "x" * 65, "-dash"])
def test_bad_release_names_are_one_line(cli, tmp_path, name):
    make_store(tmp_path, n=2)
    result = cli("report", "--db", "s.duckdb", "--out", "site", "--release", name)
    assert result.code == 2 and "release name" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "site").exists() and not (tmp_path / "releases").exists()
