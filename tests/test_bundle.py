"""Result bundles (issue 19): create, verify, import. The runs are real: two tiny trainings (test_vit,
synthetic-lesions, 32 px, 1 epoch) made once for the module by the normal `medpeft train` path; every
forged bundle is one of their bundles with one thing changed (and, unless the test says otherwise, its
manifest re-hashed, as a careful forger would)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import TINY, db_rows, single_thread  # noqa: F401  (single_thread: autouse fixture)

from medpeft_cli.bundle.layout import MANIFEST

pytestmark = pytest.mark.slow


def _main(*args: str) -> None:
    from medpeft_cli.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None), f"medpeft {' '.join(map(str, args))} exited {exc.code}"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """results.duckdb + runs/ with a LoRA and a BitFit run: {'db', 'runs', 'lora', 'bitfit'}."""
    root = tmp_path_factory.mktemp("bundle-study")
    base = [a for a in TINY if a not in ("--method", "lora")]
    for method in ("lora", "bitfit"):
        _main("train", *base, "--method", method, "--db", root / "results.duckdb", "--runs-dir", root / "runs", "--no-site", "-q")
    keys = {r["method"]: r["run_key"] for r in db_rows(root / "results.duckdb")}
    return {"db": root / "results.duckdb", "runs": root / "runs", **keys}


@pytest.fixture(scope="module")
def bundle(study, tmp_path_factory):
    """A bundle of both runs (made once; tests copy or rewrite it)."""
    out = tmp_path_factory.mktemp("bundle") / "study.tar.gz"
    _main("bundle", "create", "--db", study["db"], "--runs-dir", study["runs"], "--out", out, "--submitter", "Lab A")
    return out


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {i.name: tar.extractfile(i).read() for i in tar if i.isreg()}


def rewrite(src: Path, dst: Path, edit=lambda name, data: data, rehash: bool = True, extra: list[tuple[str, bytes]] = ()) -> Path:
    """Copy a bundle, passing each member through edit(name, data) (None drops it), appending `extra`;
    with `rehash` the manifest's checksums are recomputed for the new content."""
    with tarfile.open(src, "r:gz") as tar:
        items = [(i.name, tar.extractfile(i).read()) for i in tar]
    items = [(n, new) for n, d in items if (new := edit(n, d)) is not None] + list(extra)
    if rehash:
        manifest = json.loads(dict(items)[MANIFEST])
        manifest["files"] = {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in items if n != MANIFEST}
        items = [(n, json.dumps(manifest).encode() if n == MANIFEST else d) for n, d in items]
    with tarfile.open(dst, "w:gz") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def edit_json(target: str, change):
    def edit(name: str, data: bytes) -> bytes:
        if name != target:
            return data
        doc = json.loads(data)
        change(doc)
        return json.dumps(doc).encode()

    return edit


def verify(cli, path: Path):
    result = cli("bundle", "verify", path)
    return result, [line for line in result.stdout.splitlines() if line.startswith(("ok", "FAIL"))]


# --- create and verify ------------------------------------------------------------------------------


def test_a_bundle_of_real_runs_verifies(cli, study, bundle):
    got = members(bundle)
    manifest = json.loads(got[MANIFEST])
    assert manifest["format"] == "medpeft-bundle" and manifest["submitter"] == "Lab A"
    assert sorted(manifest["runs"]) == sorted([study["lora"], study["bitfit"]])
    for key in manifest["runs"]:
        for name in ("spec.json", "result.json", "metrics.json", "predictions_test.csv", "train.log"):
            member = f"runs/{key}/{name}"
            assert got[member] == (study["runs"] / key / name).read_bytes()
            assert manifest["files"][member]["sha256"] == hashlib.sha256(got[member]).hexdigest()
    assert not any("adapter/" in n or n.endswith(".safetensors") for n in got)  # weights only with --with-weights
    result, lines = verify(cli, bundle)
    assert result.code == 0, result.stdout + result.stderr
    assert len(lines) == 2 and all(line.startswith("ok") for line in lines)
    lora = next(r for r in db_rows(study["db"]) if r["method"] == "lora")
    assert f"ok    {study['lora']}: lora on synthetic-lesions / test_vit (seed 0, fraction 0.2): key recomputed; test macro-F1 {lora['test_macro_f1']:.4f} recomputed from 600 predictions" in lines


def test_with_weights_and_where(cli, study, tmp_path):
    result = cli("bundle", "create", "--db", study["db"], "--runs-dir", study["runs"], "--out", "w.tar.gz", "--with-weights", "--where", "method = 'lora'")
    assert result.code == 0, result.stderr
    names = set(members(tmp_path / "w.tar.gz"))
    assert any(n.startswith(f"runs/{study['lora']}/adapter/") for n in names)
    assert not any(study["bitfit"] in n for n in names)
    assert verify(cli, tmp_path / "w.tar.gz")[0].code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("--where", "no_such_column = 1"), "--where 'no_such_column = 1' is not a valid filter of the runs table"),
        (("--where", "method = 'nothing'"), "can be bundled (0 selected"),
        (("--out", "x.zip"), "must end in .tar.gz"),
    ],
)
def test_create_refuses_bad_options_with_one_line(cli, study, args, message):
    result = cli("bundle", "create", "--db", study["db"], "--runs-dir", study["runs"], *(("--out", "b.tar.gz") if "--out" not in args else ()), *args)
    assert result.code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_create_refuses_a_run_directory_that_disagrees_with_its_row(cli, study, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(study["runs"], runs)
    result_json = runs / study["lora"] / "result.json"
    doc = json.loads(result_json.read_text())
    doc["test_accuracy"] = 0.99
    result_json.write_text(json.dumps(doc))
    result = cli("bundle", "create", "--db", study["db"], "--runs-dir", runs, "--out", "b.tar.gz")
    assert result.code == 2 and f"run {study['lora']}:" in result.stderr and "test_accuracy: 0.99 vs" in result.stderr
    shutil.rmtree(runs / study["bitfit"])
    result = cli("bundle", "create", "--db", study["db"], "--runs-dir", runs, "--out", "b.tar.gz", "--where", "method = 'bitfit'")
    assert result.code == 2 and f"run {study['bitfit']}: no run directory" in result.stderr
    (tmp_path / "taken.tar.gz").write_text("x")
    result = cli("bundle", "create", "--db", study["db"], "--runs-dir", study["runs"], "--out", "taken.tar.gz")
    assert result.code == 2 and "already exists" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


# --- forgeries: one line naming the run and the mismatch, non-zero exit ------------------------------


def _refused(cli, path: Path, key: str, *fragments: str) -> None:
    result, lines = verify(cli, path)
    assert result.code == 2, result.stdout
    failing = [line for line in lines if line.startswith("FAIL")]
    assert len(failing) == 1 and failing[0].startswith(f"FAIL  {key}: "), lines
    for fragment in fragments:
        assert fragment in failing[0], failing[0]
    (err,) = result.stderr.strip().splitlines()
    assert err.startswith(f"medpeft: error: {path} failed verification (1 of 2 runs): run {key}: ")


def test_a_forged_metric_is_refused(cli, study, bundle, tmp_path):
    key = study["lora"]
    forged = rewrite(bundle, tmp_path / "f.tar.gz", edit_json(f"runs/{key}/result.json", lambda d: d.update(test_macro_f1=0.91)))
    stored = next(r for r in db_rows(study["db"]) if r["run_key"] == key)["test_macro_f1"]
    _refused(cli, forged, key, f"test_macro_f1 in result.json is 0.910000, recomputed from predictions_test.csv {stored:.6f}")
    other = rewrite(bundle, tmp_path / "g.tar.gz", edit_json(f"runs/{key}/metrics.json", lambda d: d["test"].update(auroc=0.99)))
    _refused(cli, other, key, "auroc in metrics.json is 0.990000")
    per_class = rewrite(bundle, tmp_path / "h.tar.gz", edit_json(f"runs/{key}/result.json", lambda d: d.update(per_class_f1_json="[1, 1, 1, 1]")))
    _refused(cli, per_class, key, "per_class_f1 in result.json differs")


def test_a_forged_spec_is_refused(cli, study, bundle, tmp_path):
    key = study["bitfit"]
    forged = rewrite(bundle, tmp_path / "f.tar.gz", edit_json(f"runs/{key}/spec.json", lambda d: d.update(seed=7)))
    _refused(cli, forged, key, "spec.json gives run key", f"not {key} (the spec was changed)", "seed is 0 in result.json but 7 in spec.json")


def test_a_missing_prediction_file_is_refused(cli, study, bundle, tmp_path):
    key = study["lora"]
    forged = rewrite(bundle, tmp_path / "f.tar.gz", lambda n, d: None if n == f"runs/{key}/predictions_test.csv" else d)
    _refused(cli, forged, key, "predictions_test.csv is missing")
    unlisted = rewrite(bundle, tmp_path / "g.tar.gz", lambda n, d: None if n == f"runs/{key}/predictions_test.csv" else d, rehash=False)
    _refused(cli, unlisted, key, "predictions_test.csv is listed in MANIFEST.json but missing from the bundle")


def test_edited_predictions_are_refused(cli, study, bundle, tmp_path):
    key = study["bitfit"]

    def flip(name: str, data: bytes) -> bytes | None:
        if name != f"runs/{key}/predictions_test.csv":
            return data
        lines = data.decode().splitlines()
        cells = lines[1].split(",")
        cells[2] = str(int(cells[3]))  # the first sample's label := its prediction: one more correct
        return ("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n").encode()

    _refused(cli, rewrite(bundle, tmp_path / "f.tar.gz", flip), key, "in result.json is", "recomputed from predictions_test.csv")


def test_a_duplicate_key_is_refused(cli, study, bundle, tmp_path):
    key = study["lora"]
    got = members(bundle)
    twice = rewrite(bundle, tmp_path / "twice.tar.gz", rehash=False, extra=[(f"runs/{key}/result.json", got[f"runs/{key}/result.json"])])
    _refused(cli, twice, key, f"entry 'runs/{key}/result.json' appears twice (duplicate run {key})")
    copy = [(n.replace(key, "copy"), d) for n, d in got.items() if key in n]
    renamed = rewrite(bundle, tmp_path / "copy.tar.gz", extra=copy)
    result, lines = verify(cli, renamed)
    assert result.code == 2
    assert any(line.startswith(f"FAIL  {key}: ") and f"run key {key} is also claimed by runs/copy (duplicate key)" in line for line in lines)
    assert any(line.startswith("FAIL  copy: ") and f"spec.json gives run key {key}, not copy" in line for line in lines)
    manifest = json.loads(got[MANIFEST])
    listed = rewrite(bundle, tmp_path / "listed.tar.gz", edit=lambda n, d: json.dumps({**manifest, "runs": manifest["runs"] + [key]}).encode() if n == MANIFEST else d, rehash=False)
    _refused(cli, listed, key, "listed 2 times in MANIFEST.json (duplicate key)")


def test_a_changed_file_without_a_new_manifest_is_refused(cli, study, bundle, tmp_path):
    key = study["lora"]
    forged = rewrite(bundle, tmp_path / "f.tar.gz", lambda n, d: d + b"\n" if n == f"runs/{key}/train.log" else d, rehash=False)
    _refused(cli, forged, key, "train.log differs from its sha256 in MANIFEST.json")


def test_unsafe_or_foreign_bundles_are_refused(cli, bundle, tmp_path):
    evil = rewrite(bundle, tmp_path / "evil.tar.gz", rehash=False, extra=[("../evil.sh", b"rm -rf /")])
    result, lines = verify(cli, evil)
    assert result.code == 2 and "FAIL  bundle: entry '../evil.sh' is outside runs/<run_key>/" in lines
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("runs/abc/spec.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    result, lines = verify(cli, tmp_path / "link.tar.gz")
    assert result.code == 2 and any("is not a regular file" in line for line in lines)
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    result = cli("bundle", "verify", "junk.tar.gz")
    assert result.code == 2 and "is not a readable .tar.gz bundle" in result.stderr and not (tmp_path / "abc").exists()


# --- import -----------------------------------------------------------------------------------------


def test_import_merges_verified_runs_and_never_overwrites(cli, study, bundle, tmp_path):
    first = cli("bundle", "import", bundle, "--db", "store.duckdb", "--runs-dir", "runs")
    assert first.code == 0, first.stderr
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert f"2 runs imported, 0 already stored; bundle sha256 {sha}, submitter 'Lab A'" in first.stdout
    rows = {r["run_key"]: r for r in db_rows(tmp_path / "store.duckdb")}
    original = {r["run_key"]: r for r in db_rows(study["db"])}
    assert set(rows) == set(original)
    for key, row in rows.items():
        assert (row["bundle_sha256"], row["submitter"]) == (sha, "Lab A")
        assert row["test_macro_f1"] == original[key]["test_macro_f1"] and row["spec_json"] == original[key]["spec_json"]
        assert json.loads((tmp_path / "runs" / key / "result.json").read_text())["submitter"] == "Lab A"
        assert (tmp_path / "runs" / key / "predictions_test.csv").read_bytes() == (study["runs"] / key / "predictions_test.csv").read_bytes()
    again = cli("bundle", "import", bundle, "--db", "store.duckdb", "--runs-dir", "runs", "--submitter", "Lab B")
    assert again.code == 0 and "0 runs imported, 2 already stored" in again.stdout
    assert f"skipped  {study['lora']}: the same run is already stored" in again.stdout
    assert {r["submitter"] for r in db_rows(tmp_path / "store.duckdb")} == {"Lab A"}

    from medpeft_cli.store import rebuild

    rebuild(tmp_path / "store.duckdb", tmp_path / "runs")  # the run directories keep where the rows came from
    assert {(r["submitter"], r["bundle_sha256"]) for r in db_rows(tmp_path / "store.duckdb")} == {("Lab A", sha)}


def test_import_refuses_another_run_under_a_stored_key(cli, study, bundle, tmp_path):
    assert cli("bundle", "import", bundle, "--db", "store.duckdb", "--runs-dir", "runs").code == 0
    before = db_rows(tmp_path / "store.duckdb")
    key = study["lora"]
    other = rewrite(bundle, tmp_path / "other.tar.gz", edit_json(f"runs/{key}/result.json", lambda d: d.update(wall_time_s=1.5, device="another GPU")))
    assert verify(cli, other)[0].code == 0  # a valid bundle: only not the stored run
    result = cli("bundle", "import", other, "--db", "store.duckdb", "--runs-dir", "runs", "--submitter", "Lab C")
    assert result.code == 2
    assert f"refused {key}: another run is stored under this key (wall_time_s: 1.5 vs" in result.stdout
    (err,) = result.stderr.strip().splitlines()
    assert f"refused {key}" in err and "(nothing imported)" in err
    assert db_rows(tmp_path / "store.duckdb") == before


def test_import_refuses_a_forged_bundle_and_writes_nothing(cli, study, bundle, tmp_path):
    key = study["lora"]
    forged = rewrite(bundle, tmp_path / "f.tar.gz", edit_json(f"runs/{key}/result.json", lambda d: d.update(test_macro_f1=0.91)))
    result = cli("bundle", "import", forged, "--db", "store.duckdb", "--runs-dir", "runs", "--submitter", "X")
    assert result.code == 2 and f"failed verification, nothing imported: run {key}: test_macro_f1" in result.stderr
    assert f"FAIL  {key}: test_macro_f1 in result.json is 0.910000" in result.stdout
    assert not (tmp_path / "store.duckdb").exists() and not (tmp_path / "runs").exists()
    unnamed = rewrite(bundle, tmp_path / "u.tar.gz", lambda n, d: json.dumps({**json.loads(d), "submitter": None}).encode() if n == MANIFEST else d)
    result = cli("bundle", "import", unnamed, "--db", "store.duckdb", "--runs-dir", "runs")
    assert result.code == 2 and "pass --submitter NAME" in result.stderr and not (tmp_path / "store.duckdb").exists()
