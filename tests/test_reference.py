"""Published results (issue 19): CSV import, the name mapping, the reference table kept apart from the
runs, published values beside measured cells and the reproduction page per source. No training: the
measured rows are hand-made store rows with known values, so every mean, CI and verdict is checked
against numbers computed here."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import pytest
from scipy import stats

from medpeft_cli.errors import UserError
from medpeft_cli.reference.csvfile import read_published
from medpeft_cli.reference.mapping import BackboneRef, backbone_matches, parse_backbone, resolve
from medpeft_cli.reference.store import load
from medpeft_cli.store.results import COLUMNS, append

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference"
PACKAGED = Path(__file__).resolve().parents[1] / "medpeft_cli" / "resources" / "reference"
KNOWN_METHODS = {"classification": {"full", "linear", "lora", "bitfit", "bn", "bias", "tsa", "ssf"}, "t2i": {"full", "bias", "lora", "svdiff"}}
KNOWN_DATASETS = {"busi", "ham10000", "mimic-cxr", "rsna-pneumonia"}


def row(key: str, backbone: str, dataset: str, method: str, seed: int, f1: float, weights: str = "pretrained", **kw) -> dict:
    """A store row of a finished classification run with macro-F1 `f1`."""
    r = dict.fromkeys(COLUMNS)
    r.update(run_key=key, protocol_version=1, status="ok", task="classification", dataset=dataset, backbone=backbone, weights=weights,
             method=method, data_fraction=1.0, seed=seed, test_macro_f1=f1, test_accuracy=f1, val_macro_f1=f1, lr=1e-3,
             spec_json=json.dumps({"method": {"name": method}, "train": {"lr": 1e-3}}), finished_at=f"2026-01-01T00:00:{seed:02d}")  # fmt: skip
    r.update(kw)
    return r


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- CSV files ------------------------------------------------------------------------------------


def test_the_packaged_tables_are_the_shared_reference_files():
    if not SHARED.is_dir():
        pytest.skip("../shared/reference is absent (team checkout only)")
    for name in ("dutt2024_classification_f1.csv", "dutt2024_t2i_fid.csv"):
        assert (PACKAGED / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_the_study_tables_parse_with_values_as_printed():
    f1 = read_published(PACKAGED / "dutt2024_classification_f1.csv")
    fid = read_published(PACKAGED / "dutt2024_t2i_fid.csv")
    assert len(f1.rows) == 150 and len(fid.rows) == 24
    first = f1.rows[0]
    assert (first.table, first.backbone, first.dataset, first.method, first.metric) == ("Table 2", "resnet50 (ImageNet-1k)", "busi", "full", "f1")
    assert (first.value, first.value_text, first.plus_minus, first.line) == (0.72, "0.72", "1.1", 2)
    tsa = next(r for r in f1.rows if r.method == "tsa" and r.dataset == "busi")
    assert tsa.value_text == "0.90"  # the printed text, trailing zero kept
    assert {r.train_images for r in fid.rows} == {"110K", "55K", "11K"} and fid.rows[0].plus_minus is None


def test_the_long_form_is_read_too(tmp_path):
    path = write_csv(tmp_path / "long.csv", "table,backbone,dataset,method,metric,value,plus_minus\nT1,resnet50 (ImageNet-1k),busi,full,accuracy,0.8,2\n")
    (r,) = read_published(path).rows
    assert (r.metric, r.value, r.plus_minus) == ("accuracy", 0.8, "2")


@pytest.mark.parametrize(
    "text, message",
    [
        ("table,backbone,dataset,f1\nT,b,d,0.5\n", "missing column(s) method"),
        ("table,backbone,dataset,method,f1,notes\nT,b,d,m,0.5,x\n", "unknown column(s) notes"),
        ("table,backbone,dataset,method,f1,fid\nT,b,d,m,0.5,3\n", "exactly one metric column"),
        ("table,backbone,dataset,method,metric\nT,b,d,m,f1\n", "both `metric` and `value`"),
        ("table,backbone,dataset,method,f1\nT,b,d,m,0.5x\n", "line 2: value '0.5x' is not a number"),
        ("table,backbone,dataset,method,f1\nT,b,d,m,nan\n", "is not a finite number"),
        ("table,backbone,dataset,method,f1\nT,b,d,m,0.5\nT,b,d,m,0.6\n", "line 3: the same entry as line 2"),
        ("table,backbone,dataset,method,f1\n,b,d,m,0.5\n", "line 2: empty table"),
        ("table,backbone,dataset,method,f1\n", "has a header but no rows"),
        ("", "is empty"),
        ("table,backbone,dataset,method,f1,data_fraction\nT,b,d,m,0.5,1.5\n", "not in (0, 1]"),
    ],
)
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, text, message):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        read_published(path)
    assert "bad.csv" in str(info.value) and "\n" not in str(info.value)


# --- the mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "published, measured, weights, expected",
    [
        ("resnet50 (ImageNet-1k)", "resnet50.tv_in1k", "pretrained", True),
        ("resnet50 (ImageNet-1k)", "resnet50.a1_in1k", "pretrained", True),
        ("resnet50 (ImageNet-1k)", "hf-hub:timm/resnet50.tv_in1k", "pretrained", True),
        ("resnet50 (ImageNet-1k)", "resnet50.tv_in1k", "random", False),  # random init is not the study's backbone
        ("resnet50 (ImageNet-1k)", "resnet50.fb_ssl_yfcc100m_ft_in1k", "pretrained", False),  # other pretraining data
        ("resnet50 (ImageNet-1k)", "resnet50", "pretrained", False),  # no tag: which weights is not stated
        ("resnet50 (ImageNet-1k)", "resnet101.tv_in1k", "pretrained", False),
        ("vit_base_patch16_224 (ImageNet-21k)", "vit_base_patch16_224.orig_in21k", "pretrained", True),
        ("vit_base_patch16_224 (ImageNet-21k)", "vit_base_patch16_224.augreg_in21k", "pretrained", True),
        ("vit_base_patch16_224 (ImageNet-21k)", "vit_base_patch16_224.augreg_in21k_ft_in1k", "pretrained", False),
        ("vit_base_patch16_224 (ImageNet-21k)", "vit_large_patch16_224.orig_in21k", "pretrained", False),
        ("Stable Diffusion 1.x U-Net (version not stated)", "stable-diffusion-v1-5/stable-diffusion-v1-5", "pipeline", True),
        ("Stable Diffusion 1.x U-Net (version not stated)", "tiny-sd", "pipeline", False),
    ],
)
def test_a_published_backbone_matches_the_same_architecture_and_pretraining_data(published, measured, weights, expected):
    ref = parse_backbone(published)
    assert ref is not None
    assert backbone_matches(ref, measured, weights) is expected


def test_resolve_maps_printed_names_and_explains_what_it_cannot():
    kw = {"known_methods": KNOWN_METHODS, "known_datasets": KNOWN_DATASETS}
    ok = resolve(backbone="resnet50 (ImageNet-1k)", dataset="BreastUS", method="Full FT", metric="F1", data_fraction=None, train_images=None, **kw)
    assert (ok.task, ok.dataset, ok.method, ok.metric, ok.data_fraction, ok.unmapped) == ("classification", "busi", "full", "macro_f1", 1.0, None)
    assert ok.backbone == BackboneRef("resnet50", "in1k")
    fid = resolve(backbone="Stable Diffusion 1.x U-Net (version not stated)", dataset="mimic-cxr", method="SV-Diff", metric="fid",
                  data_fraction=None, train_images="55K", **kw)  # fmt: skip
    assert (fid.task, fid.method, fid.metric, fid.data_fraction, fid.unmapped) == ("t2i", "svdiff", "fid", 0.5, None)
    bad = resolve(backbone="my net", dataset="nowhere", method="magic", metric="dice", data_fraction=None, train_images=None, **kw)
    assert "metric 'dice'" in bad.unmapped and "dataset 'nowhere'" in bad.unmapped and "backbone 'my net'" in bad.unmapped
    odd = resolve(backbone="resnet50 (ImageNet-1k)", dataset="busi", method="magic", metric="f1", data_fraction=None, train_images=None, **kw)
    assert odd.unmapped == "method 'magic' is not a medpeft classification method"


# --- import ---------------------------------------------------------------------------------------


def test_builtin_import_is_idempotent_and_lands_in_its_own_table(cli, tmp_path):
    append(tmp_path / "r.duckdb", row("m1", "resnet50.tv_in1k", "busi", "full", 0, 0.7))
    first = cli("reference", "import", "--builtin", "dutt2024", "--db", "r.duckdb")
    assert first.code == 0, first.stderr
    assert "imported 174 published values of 'Dutt et al. 2024' (Table 2: 30, Table 3: 120, Table 4: 24)" in first.stdout
    assert "174 map to medpeft names; 0 do not" in first.stdout
    again = cli("reference", "import", "--builtin", "dutt2024", "--db", "r.duckdb")
    assert again.code == 0 and "replaced 174 earlier rows of the same tables: the values are unchanged" in again.stdout
    refs = load(tmp_path / "r.duckdb")
    assert len(refs) == 174 and {r["source"] for r in refs} == {"Dutt et al. 2024"}
    t4 = [r for r in refs if r["ref_table"] == "Table 4"]
    assert {(r["medpeft_metric"], r["task"]) for r in t4} == {("fid", "t2i")} and {r["data_fraction"] for r in t4} == {1.0, 0.5, 0.1}
    from helpers import db_rows

    assert [r["run_key"] for r in db_rows(tmp_path / "r.duckdb")] == ["m1"]  # the runs table is untouched
    listed = cli("reference", "list", "--db", "r.duckdb")
    assert "Dutt et al. 2024 / Table 3: 120 values (0 unmapped)" in listed.stdout


def test_reimport_replaces_only_the_same_source_and_tables(cli, tmp_path):
    write_csv(tmp_path / "t1.csv", "table,backbone,dataset,method,f1\nT1,resnet50 (ImageNet-1k),busi,full,0.5\nT1,resnet50 (ImageNet-1k),busi,linear,0.4\n")
    write_csv(tmp_path / "t2.csv", "table,backbone,dataset,method,f1\nT2,resnet50 (ImageNet-1k),busi,bn,0.6\n")
    assert cli("reference", "import", "t1.csv", "t2.csv", "--source", "Lab X", "--db", "r.duckdb").code == 0
    assert cli("reference", "import", "t1.csv", "--source", "Other", "--db", "r.duckdb").code == 0
    write_csv(tmp_path / "t1.csv", "table,backbone,dataset,method,f1\nT1,resnet50 (ImageNet-1k),busi,full,0.55\n")
    result = cli("reference", "import", "t1.csv", "--source", "Lab X", "--db", "r.duckdb")
    assert result.code == 0 and "replaced 2 earlier rows of the same tables (values changed)" in result.stdout
    got = sorted((r["source"], r["ref_table"], r["method"], r["value"]) for r in load(tmp_path / "r.duckdb"))
    assert got == [("Lab X", "T1", "full", 0.55), ("Lab X", "T2", "bn", 0.6), ("Other", "T1", "full", 0.5), ("Other", "T1", "linear", 0.4)]


def test_unmapped_rows_are_stored_and_listed(cli, tmp_path):
    write_csv(tmp_path / "p.csv", "table,backbone,dataset,method,f1\nT,resnet50 (ImageNet-1k),busi,full,0.5\nT,resnet50 (ImageNet-1k),busi,magic,0.4\n")
    result = cli("reference", "import", "p.csv", "--source", "S", "--db", "r.duckdb")
    assert result.code == 0
    assert "1 map to medpeft names; 1 do not" in result.stdout
    assert "unmapped: p.csv line 3 (T, resnet50 (ImageNet-1k), busi, magic): method 'magic' is not a medpeft classification method" in result.stdout
    assert sorted(bool(r["unmapped"]) for r in load(tmp_path / "r.duckdb")) == [False, True]


def test_import_errors_are_one_line_and_store_nothing(cli, tmp_path):
    write_csv(tmp_path / "bad.csv", "table,backbone,dataset,method,f1\nT,b,busi,full,0.5\nT,b,busi,lora,oops\n")
    for args, message in [
        (("bad.csv", "--source", "S"), "bad.csv line 3: value 'oops' is not a number"),
        (("bad.csv",), "--source is required"),
        (("--builtin", "nope"), "no built-in published results called 'nope'"),
        (("bad.csv", "--builtin", "dutt2024"), "give CSV files or --builtin, not both"),
        (("missing.csv", "--source", "S"), "cannot read missing.csv"),
    ]:
        result = cli("reference", "import", *args, "--db", "r.duckdb")
        assert result.code == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.duckdb").exists()


# --- the site -------------------------------------------------------------------------------------


def _study_store(db: Path) -> list[float]:
    """Measured rows beside Table 3's ViT-B / BUSI: lora over 3 seeds, full over 1 seed, bitfit on a random-init
    ViT-B (not the study's backbone), lora on ViT-B fine-tuned on IN-1k (not IN-21k only)."""
    lora = [0.92, 0.95, 0.93]
    for seed, f1 in enumerate(lora):
        append(db, row(f"lora-{seed}", "vit_base_patch16_224.orig_in21k", "busi", "lora", seed, f1))
    append(db, row("full-0", "vit_base_patch16_224.orig_in21k", "busi", "full", 0, 0.80))
    for seed, f1 in enumerate([0.5, 0.6, 0.7]):
        append(db, row(f"bitfit-random-{seed}", "vit_base_patch16_224.orig_in21k", "busi", "bitfit", seed, f1, weights="random"))
        append(db, row(f"lora-ft1k-{seed}", "vit_base_patch16_224.augreg_in21k_ft_in1k", "busi", "lora", seed, f1))
        append(db, row(f"linear-{seed}", "vit_base_patch16_224.orig_in21k", "busi", "linear", seed, 0.5 + seed / 100))
    return lora


def _text(path: Path) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8"))))


def test_reproduction_page_compares_published_with_the_measured_ci(cli, tmp_path):
    lora = _study_store(tmp_path / "s.duckdb")
    assert cli("reference", "import", "--builtin", "dutt2024", "--db", "s.duckdb").code == 0
    result = cli("report", "--db", "s.duckdb", "--out", "site", "--runs-dir", "runs")
    assert result.code == 0, result.stderr
    assert "(13 runs, 174 published values)" in result.stdout
    pages = list((tmp_path / "site" / "reproduction").glob("*.html"))
    assert len(pages) == 1
    text = _text(pages[0])
    mean = sum(lora) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(lora) / 3**0.5
    # Table 3 ViT-B BUSI LoRA 0.94: inside [mean - half, mean + half]
    assert mean - half <= 0.94 <= mean + half
    assert f"Table 3 vit_base_patch16_224 (ImageNet-21k) busi lora Macro-F1 all training data 0.94 ± 0.6 vit_base_patch16_224.orig_in21k protocol v1 3 {mean:.4f} {mean - half:.4f} to {mean + half:.4f} {mean - 0.94:+.4f} inside the CI" in text
    # linear: measured 0.51 ± small, published 0.79: outside
    assert "busi linear Macro-F1 all training data 0.79 ± 0.7 vit_base_patch16_224.orig_in21k protocol v1 3 0.5100" in text
    assert re.search(r"0\.79 ± 0\.7 vit_base_patch16_224\.orig_in21k protocol v1 3 0\.5100 [\d.]+ to [\d.]+ -0\.2800 outside the CI", text)
    # full: one seed, no CI
    assert "busi full Macro-F1 all training data 0.82 ± 1.2 vit_base_patch16_224.orig_in21k protocol v1 1 0.8000 — -0.0200 one seed: no CI" in text
    # random-init and IN-1k fine-tuned ViT-B are not the study's backbone: bitfit stays "not measured"
    assert "vit_base_patch16_224.augreg_in21k_ft_in1k" not in text and "bitfit Macro-F1 all training data 0.97 ± 1.3 vit_base" not in text
    assert "1 inside the measured 95 % CI, 1 outside it, 1 against a single seed (no CI), 171 not measured yet, 0 without a medpeft counterpart" in text
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert f'href="{pages[0].relative_to(tmp_path / "site").as_posix()}"' in index


def test_published_values_sit_beside_cells_and_change_no_statistic(cli, tmp_path):
    _study_store(tmp_path / "s.duckdb")
    assert cli("report", "--db", "s.duckdb", "--out", "before").code == 0
    assert cli("reference", "import", "--builtin", "dutt2024", "--db", "s.duckdb").code == 0
    assert cli("report", "--db", "s.duckdb", "--out", "after").code == 0
    # means, CIs, ranks and tests: the same with and without published values
    assert (tmp_path / "before" / "summary.csv").read_bytes() == (tmp_path / "after" / "summary.csv").read_bytes()
    assert (tmp_path / "before" / "results.csv").read_bytes() == (tmp_path / "after" / "results.csv").read_bytes()
    index = (tmp_path / "after" / "index.html").read_text(encoding="utf-8")
    marks = re.findall(r'<span class="published" title="([^"]*)">([^<]*)</span>', index)
    shown = {html.unescape(label) for _, label in marks}
    assert shown == {"Dutt et al. 2024: 0.94", "Dutt et al. 2024: 0.79", "Dutt et al. 2024: 0.82"}  # lora, linear, full of ViT-B/BUSI
    assert all("not part of any mean, rank or test" in html.unescape(t) for t, _ in marks)
    lora_cell = re.search(r'<td class="num[^"]*" data-filtered data-f-dataset="busi" data-v="([\d.]+)"[^>]*>(?:(?!</td>).)*Dutt et al\. 2024: 0\.94', index)
    assert lora_cell and abs(float(lora_cell.group(1)) - (0.92 + 0.95 + 0.93) / 3) < 1e-6  # sorted by the measured mean
    assert "class=\"published\"" not in (tmp_path / "before" / "index.html").read_text(encoding="utf-8")


def test_unmapped_published_rows_are_listed_on_the_page(cli, tmp_path):
    append(tmp_path / "s.duckdb", row("a", "resnet50.tv_in1k", "busi", "full", 0, 0.7))
    write_csv(tmp_path / "p.csv", "table,backbone,dataset,method,f1\nT9,resnet50 (ImageNet-1k),busi,magic,0.4\nT9,resnet50 (ImageNet-1k),busi,full,0.6\n")
    assert cli("reference", "import", "p.csv", "--source", "<b>Lab</b>", "--db", "s.duckdb").code == 0
    assert cli("report", "--db", "s.duckdb", "--out", "site").code == 0
    (page,) = (tmp_path / "site" / "reproduction").glob("*.html")
    raw = page.read_text(encoding="utf-8")
    assert "<b>Lab</b>" not in raw and "&lt;b&gt;Lab&lt;/b&gt;" in raw  # the source label is escaped
    text = _text(page)
    assert "Without a medpeft counterpart (1)" in text
    assert "p.csv:2 T9 resnet50 (ImageNet-1k) busi magic 0.4 method 'magic' is not a medpeft classification method" in text
    assert "T9 resnet50 (ImageNet-1k) busi full Macro-F1 all training data 0.6 resnet50.tv_in1k protocol v1 1 0.7000" in text


def test_csv_of_the_reference_table_round_trips(tmp_path):
    """The published rows keep every printed field (what a release's references.csv holds)."""
    from medpeft_cli.reference.importer import import_published

    import_published(tmp_path / "r.duckdb", [PACKAGED / "dutt2024_t2i_fid.csv"], "Dutt et al. 2024", KNOWN_METHODS, KNOWN_DATASETS)
    refs = load(tmp_path / "r.duckdb")
    lora = next(r for r in refs if r["method"] == "lora" and r["setting"] == "train_images=110K")
    assert (lora["value"], lora["value_text"], lora["medpeft_method"], lora["file_line"]) == (439.65, "439.65", "lora", 7)
    with open(PACKAGED / "dutt2024_t2i_fid.csv", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == len(refs)
