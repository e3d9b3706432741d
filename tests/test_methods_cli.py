"""The method zoo through the `medpeft` command: the capability matrix, citations, refusals, budgets, export."""

import json
from pathlib import Path

import duckdb
import pytest
import torch
from helpers import TINY, single_thread  # noqa: F401  (single_thread: one torch thread for tiny models)

from medpeft_cli.methods import FAMILIES, list_methods


def _row(db="results/medpeft.duckdb") -> dict:
    con = duckdb.connect(db, read_only=True)
    try:
        cur = con.execute("SELECT * FROM runs ORDER BY finished_at DESC LIMIT 1")
        return dict(zip([d[0] for d in cur.description], cur.fetchone()))
    finally:
        con.close()


def test_matrix_is_read_from_the_registry(cli):
    res = cli("methods", "--matrix")
    assert res.code == 0, res.stderr
    lines = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if line.count("│") > len(FAMILIES)}
    for info in list_methods("classification"):
        cells = [c.strip() for c in lines[info.name].split("│")[2:-1]]
        assert cells == ["yes" if f in info.families else "-" for f in FAMILIES], info.name
    assert "hvit = hierarchical" in res.stdout


def test_json_matrix_and_details_with_citations(cli):
    data = json.loads(cli("methods", "--json").stdout)
    by_name = {m["method"]: m for m in data["methods"]}
    assert by_name["tsa"]["families"] == {"vit": False, "hvit": False, "cnn": True, "other": False}
    assert by_name["lora"]["mergeable"] and not by_name["adaptformer"]["mergeable"] and by_name["lora"]["size_knob"] == "rank"
    details = cli("methods", "--details").stdout
    for info in list_methods("classification"):
        assert f"cite: {info.cite}" in " ".join(details.split()), info.name
    assert "https://arxiv.org/abs/2210.08823" in details  # SSF


def test_parameter_counts_on_a_named_backbone(cli):
    res = cli("methods", "--count", "test_vit", "--image-size", "32", "--num-classes", "4")
    assert res.code == 0, res.stderr
    lora = next(line for line in res.stdout.splitlines() if "│" in line and line.split("│")[1].strip() == "lora")
    assert "12,288" in lora and "260" in lora  # 6 blocks x (8 x 64 + 192 x 8); head 64 x 4 + 4
    assert "tsa" not in res.stdout  # a CNN-only method


def test_unsupported_pair_is_refused_before_anything_is_written(cli, tmp_path):
    res = cli("train", *TINY, "--method", "tsa", "--quiet")
    assert res.code == 2
    assert res.stderr.strip().splitlines() == [
        "medpeft: error: method 'tsa' does not support backbone 'test_vit' (detected family 'vit'); "
        "it supports: cnn. `medpeft methods --matrix` shows what applies to each family"
    ]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "results" / "medpeft.duckdb").exists()


def test_budget_errors_are_one_line(cli):
    res = cli("train", *TINY, "--method", "bn", "--param-budget", "1%", "--quiet")
    assert res.code == 2 and "has a fixed size, so --param-budget cannot set it" in res.stderr
    res = cli("train", *TINY, "--method", "lora", "--param-budget", "lots", "--quiet")
    assert res.code == 2 and "param_budget: Value error, write a percentage" in res.stderr
    res = cli("train", *TINY, "--method", "lora", "--param-budget", "1%", "--set", "method.rank=7", "--quiet")
    assert res.code == 2 and "method.rank=7 conflicts with param_budget 1% (which needs rank=" in res.stderr


@pytest.mark.slow
def test_budgeted_qv_lora_run_exports_a_plain_timm_model(cli, tmp_path):
    import timm
    from safetensors.torch import load_file

    from medpeft_cli.export import load_run_model

    res = cli("train", *TINY, "--method", "lora", "--set", "method.targets=[q,v]", "--param-budget", "2%", "--quiet", "--no-site")
    assert res.code == 0, res.stderr
    row = _row()
    spec = json.loads(row["spec_json"])
    rank = spec["method"]["rank"]
    assert row["param_budget"] == round(0.02 * row["backbone_params"]) and row["method_params"] == 6 * 4 * rank * 64
    assert abs(row["method_params"] - row["param_budget"]) <= 6 * 4 * 64 / 2  # within half a rank step
    assert spec["param_budget"] == "2%" and "budget" in res.stdout
    run_dir = Path("runs") / row["run_key"]
    assert json.loads((run_dir / "adapter" / "medpeft_structure.json").read_text()) == {"split_qkv": True}

    evaluated = cli("eval", str(run_dir), "--json")  # the split qkv is rebuilt before peft loads the adapter
    assert evaluated.code == 0 and json.loads(evaluated.stdout)["matches_stored"] is True, evaluated.stderr

    res = cli("export", str(run_dir), "--merge", "--out", "merged.safetensors")
    assert res.code == 0, res.stderr
    assert "max |merged - adapted|" in res.stdout
    plain = timm.create_model("test_vit", num_classes=4, img_size=32)
    plain.load_state_dict(load_file(str(tmp_path / "merged.safetensors")), strict=True)
    _, _, _, _, adapted = load_run_model(run_dir)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = adapted(x)
        assert float((plain.eval()(x) - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.slow
def test_export_refuses_what_cannot_be_merged(cli):
    res = cli("export", "runs/none")
    assert res.code == 2 and "pass --merge" in res.stderr
    res = cli("train", *TINY, "--method", "adaptformer", "--set", "method.bottleneck=4", "--quiet", "--no-site")
    assert res.code == 0, res.stderr
    res = cli("export", f"runs/{_row()['run_key']}", "--merge")
    assert res.code == 2 and "cannot be merged into plain backbone weights" in res.stderr
    assert not list(Path(".").glob("*.safetensors"))


def test_run_key_ignores_an_unset_budget():
    from medpeft_cli.config import build_spec, run_key
    from medpeft_cli.run import resolve

    plain = build_spec(flags={"backbone": "test_vit", "method": "lora", "image_size": 32})
    assert "param_budget" not in plain.key_fields()
    budgeted, info, options = resolve(build_spec(flags={"backbone": "test_vit", "method": "lora", "image_size": 32, "param_budget": "3%"}))
    assert budgeted.param_budget == "3%" and run_key(budgeted) != run_key(resolve(plain)[0])
    again = resolve(budgeted)[0]  # resolving a resolved spec (e.g. a saved spec.json) is stable
    assert run_key(again) == run_key(budgeted) and again.method.options["rank"] == options.rank


@pytest.mark.parametrize("budget, expected", [("0.5%", 1500), ("150k", 150_000), ("1.2M", 1_200_000), ("4096", 4096)])
def test_budget_syntax(budget, expected):
    from medpeft_cli.methods.budget import parse_budget

    assert parse_budget(budget, 300_000) == expected
