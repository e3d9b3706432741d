"""Grid files -> manifests: expansion, ranges, exclusions, `lr: tuned`, run keys, and one-line errors."""

import json
import textwrap

import pytest

from medpeft_cli.config import build_spec, run_key
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.grid import load_grid
from medpeft_cli.sweep.manifest import plan, read_manifest
from medpeft_cli.run import resolve


def grid_file(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_ranges_dotted_keys_and_exclusions(tmp_path):
    path = grid_file(
        tmp_path,
        """
        backbone: test_vit
        weights: random
        image_size: 32
        train: {epochs: 1}
        grid:
          method: [linear, {name: lora, rank: 4}, {name: lora, rank: 8}]
          seed: {range: [0, 3]}
          data_fraction: {linspace: [0.2, 0.6, 3]}
          weight_decay: [0.0, 0.05]        # a train option by its short name
        exclude:
          - {method: linear, weight_decay: 0.0}
          - {method: {name: lora, rank: 8}, data_fraction: [0.2, 0.4]}
          - {method: linear, seed: {range: [2, 3]}, weight_decay: 0.05}
        """,
    )
    grid = load_grid(path)
    assert grid.axes["seed"] == [0, 1, 2] and grid.axes["data_fraction"] == [0.2, 0.4, 0.6]
    assert grid.axes["train.weight_decay"] == [0.0, 0.05]
    # 3 methods x 3 seeds x 3 fractions x 2 decays = 54; linear with decay 0: 9; lora r8 at 0.2/0.4: 12;
    # linear, seed 2, decay 0.05: 3
    assert len(grid.points) == 54 - 9 - 12 - 3 and grid.excluded == 24
    ranks = {p.spec.method.options.get("rank") for p in grid.points if p.spec.method.name == "lora"}
    assert ranks == {4, 8}
    assert all(p.spec.train.lr is not None for p in grid.points)  # filled with the method default


def test_grid_point_has_the_same_run_key_as_medpeft_train(tmp_path):
    path = grid_file(tmp_path, "backbone: test_vit\nweights: random\nimage_size: 32\ngrid: {method: [lora], seed: [3]}\n")
    manifest = plan(path)
    by_hand = resolve(build_spec(None, {"backbone": "test_vit", "weights": "random", "image_size": 32, "method": "lora", "seed": 3}))[0]
    assert manifest.entries[0].run_key == run_key(by_hand)
    assert manifest.entries[0].lr_source == "method-default"


def test_manifest_paths_are_absolute_and_file_round_trips(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    grid_file(tmp_path, "name: small\nbackbone: test_vit\nweights: random\nimage_size: 32\ngrid: {method: [linear, bitfit]}\n")
    res = cli("sweep", "plan", "grid.yaml")
    assert res.code == 0, res.stderr
    assert "grid small: 2 runs" in res.stdout and "0 done, 2 to run" in res.stdout
    manifest = read_manifest(tmp_path / "sweeps" / "small.manifest.json")
    assert [e.index for e in manifest.entries] == [0, 1]
    assert manifest.entries[0].spec["output"]["runs_dir"] == str(tmp_path.resolve() / "runs")
    assert manifest.entries[0].spec["output"]["db"] == str(tmp_path.resolve() / "results" / "medpeft.duckdb")


def test_duplicates_after_normalisation_are_dropped(tmp_path):
    # linear's default lr is 1e-3: `lr: null` and `lr: 0.001` are the same run
    path = grid_file(tmp_path, "backbone: test_vit\nweights: random\ngrid: {method: [linear], lr: [null, 0.001, 0.01]}\n")
    grid = load_grid(path)
    assert len(grid.points) == 2 and grid.duplicates == 1
    assert sorted(p.lr_source for p in grid.points) == ["given", "method-default"]


def test_tuned_lr_groups_runs_by_method_backbone_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = grid_file(
        tmp_path,
        """
        backbone: test_vit
        weights: random
        grid:
          method: [linear, bitfit]
          data_fraction: [0.2, 1.0]
          seed: [0, 1]
          lr: tuned
        tune: {trials: 4, storage: tune.log}
        """,
    )
    manifest = plan(path)
    assert len(manifest.entries) == 8 and all(e.run_key is None and e.lr_source == "tuned" for e in manifest.entries)
    assert len(manifest.tune_groups) == 2  # fractions and seeds share their method's study
    assert {e.study for e in manifest.entries} == {g.study for g in manifest.tune_groups}
    assert manifest.tune_storage == str((tmp_path / "tune.log").resolve())
    group = manifest.tune_groups[0]
    assert group.spec["train"]["lr"] is None and group.spec["seed"] == 0 and group.spec["data_fraction"] == 1.0

    per_run = grid_file(tmp_path, path.read_text().replace("tune: {", "tune: {data_fraction: per-run, "), "per_run.yaml")
    assert len(plan(per_run).tune_groups) == 4  # one study per fraction
    wider = grid_file(tmp_path, path.read_text().replace("tune: {", "tune: {lr_max: 0.5, "), "wider.yaml")
    assert {g.study for g in plan(wider).tune_groups}.isdisjoint({g.study for g in manifest.tune_groups})
    more = grid_file(tmp_path, path.read_text().replace("trials: 4", "trials: 9"), "more.yaml")
    assert [g.study for g in plan(more).tune_groups] == [g.study for g in manifest.tune_groups]  # more trials extend the study


def test_tuned_base_lr_can_be_overridden_per_point(tmp_path):
    path = grid_file(tmp_path, "backbone: test_vit\nweights: random\ntrain: {lr: tuned}\ngrid: {method: [linear], lr: [tuned, 0.01]}\n")
    points = load_grid(path).points
    assert [p.tuned for p in points] == [True, False] and points[1].spec.train.lr == 0.01


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid: {methd: [lora]}\n", "unknown key 'methd'"),
        ("grid: {method: []}\n", "empty list"),
        ("grid: {seed: {range: [0.5, 2]}}\n", "range takes [start, stop]"),
        ("grid: {output.runs_dir: [a, b]}\n", "cannot vary within a grid"),
        ("grid: {data_fraction: [0.5, 2.0]}\n", "data_fraction=2"),
        ("grid: {method: [{name: lora, rnk: 4}]}\n", "unknown option"),
        ("grid: {method: [lora]}\nexclude: [{method: full}]\n", "exclude entry #1"),
        ("grid: {method: [lora]}\ntune: {lr_min: 0.1, lr_max: 0.01}\n", "lr_min"),
        ("grid: {lr: [fast]}\n", "train.lr"),
    ],
)
def test_bad_grids_are_one_line_errors(tmp_path, text, message):
    path = grid_file(tmp_path, "backbone: test_vit\nweights: random\n" + text)
    with pytest.raises(UserError) as info:
        load_grid(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unsupported_method_backbone_pair_names_the_exclusion(tmp_path, cli):
    grid_file(tmp_path, "image_size: 32\ngrid: {backbone: [test_vit, test_resnet], method: [lora, linear]}\n")
    res = cli("sweep", "plan", str(tmp_path / "grid.yaml"))
    assert res.code == 2
    assert "lora on test_resnet (family cnn, 1 runs)" in res.stderr and "exclude: [{method: lora, backbone: test_resnet}]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()


def test_tuned_is_only_allowed_in_grid_files(cli, tmp_path):
    (tmp_path / "run.yaml").write_text("train: {lr: tuned}\n")
    res = cli("train", "--config", "run.yaml", "--no-site")
    assert res.code == 2 and "train.lr" in res.stderr and "tuned" in res.stderr


def test_run_one_rejects_bad_index_and_non_manifest(cli, tmp_path):
    grid_file(tmp_path, "backbone: test_vit\nweights: random\nimage_size: 32\ngrid: {method: [linear]}\n")
    assert cli("sweep", "plan", "grid.yaml", "--manifest", "m.json").code == 0
    res = cli("sweep", "run-one", "m.json", "--index", "5")
    assert res.code == 2 and "index 5 is outside manifest" in res.stderr
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    res = cli("sweep", "run-one", "other.json", "--index", "0")
    assert res.code == 2 and "not a medpeft sweep manifest" in res.stderr
