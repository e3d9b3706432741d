"""Grid -> manifest -> local run of the missing runs -> report, on synthetic data with tiny models."""

import json
import os

import duckdb
import pytest

from medpeft_cli.report.runpage import shard

GRID = """\
name: small
backbone: test_vit
weights: random
dataset: synthetic-lesions
image_size: 32
data_fraction: 0.2
train: {epochs: 1, batch_size: 64}
grid:
  method: [linear, bitfit]
"""


def rows(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM runs ORDER BY method")
        return [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.mark.slow
def test_plan_run_missing_then_report(cli, tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    # One run of the grid already exists, started by hand with the same settings.
    by_hand = cli("train", "--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--image-size", "32", "--data-fraction", "0.2", "--epochs", "1", "--batch-size", "64", "--method", "linear", "-q", "--no-site")
    assert by_hand.code == 0, by_hand.stderr

    planned = cli("sweep", "plan", "grid.yaml")
    assert planned.code == 0, planned.stderr
    assert "1 done, 1 to run" in planned.stdout

    ran = cli("sweep", "run", "grid.yaml")
    assert ran.code == 0, ran.stderr
    assert "1 finished, 1 already done, 0 failed" in ran.stdout
    assert "#1 bitfit / test_vit / synthetic-lesions / fraction 0.2 / seed 0: test macro-F1" in ran.stdout

    again = cli("sweep", "plan", "grid.yaml")
    assert "2 done, 0 to run" in again.stdout
    manifest = json.loads((tmp_path / "sweeps" / "small.manifest.json").read_text())
    stored = rows(tmp_path / "results" / "medpeft.duckdb")
    assert sorted(r["run_key"] for r in stored) == sorted(e["run_key"] for e in manifest["entries"])
    bitfit = next(r for r in stored if r["method"] == "bitfit")
    assert bitfit["lr_source"] == "method-default" and bitfit["tuned_lr_trials"] is None and bitfit["world_size"] == 1

    site = cli("report", "--out", "site")
    assert site.code == 0, site.stderr
    assert "synthetic-lesions" in (tmp_path / "site" / "index.html").read_text()
    assert all(f'id="{r["run_key"]}"' in (tmp_path / "site" / "runs" / f"{shard(r['run_key'])}.html").read_text() for r in stored)


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_sweep(cli, tmp_path):
    # 5000 shots per class is more than the training split has: that run fails when it starts
    grid = GRID.replace("data_fraction: 0.2\n", "").replace("method: [linear, bitfit]", "method: [linear]\n  shots: [5000, 8]")
    (tmp_path / "grid.yaml").write_text(grid)
    res = cli("sweep", "run", "grid.yaml")
    assert res.code == 2
    assert "1 finished, 0 already done, 1 failed" in res.stdout and "FAILED: class" in res.stdout
    assert "1 run(s) failed (indices 0)" in res.stderr
    assert len(rows(tmp_path / "results" / "medpeft.duckdb")) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)  # two training subprocesses (measured: 8-45 s on 2 shared cores)
def test_concurrent_runs_as_subprocesses(cli, tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    res = cli("sweep", "run", "grid.yaml", "--concurrent", "2")
    assert res.code == 0, res.stderr + res.stdout
    assert "2 finished, 0 already done, 0 failed" in res.stdout
    assert len(rows(tmp_path / "results" / "medpeft.duckdb")) == 2
    logs = sorted(p.name for p in (tmp_path / "sweeps" / "small.logs").iterdir())
    assert logs == ["0.log", "1.log"]
    assert "finished: test macro-F1" in (tmp_path / "sweeps" / "small.logs" / "1.log").read_text()


@pytest.mark.slow
def test_a_run_at_once_gets_the_exit_code_directory_and_environment_of_its_command(tmp_path, monkeypatch):
    """`sweep run -j N` starts each run in a process of its own (forked from a fork server that imported
    torch once, in whatever directory and environment it started): what the run sees and how it ends
    must be what `medpeft ARGS` started fresh, here and now, gives."""
    from medpeft_cli.sweep.local import _run_process

    monkeypatch.chdir(tmp_path)
    log = tmp_path / "out.log"
    assert _run_process(["sweep", "run-one", "missing.json", "--index", "0"], log, {**os.environ}) == 2
    [line] = log.read_text().splitlines()
    assert line.startswith("medpeft: error: ") and "missing.json" in line
    # this call's directory: a relative grid and manifest path
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "grid.yaml").write_text(GRID)
    monkeypatch.chdir(tmp_path / "sub")
    assert _run_process(["sweep", "plan", "grid.yaml"], log, {**os.environ}) == 0
    assert (tmp_path / "sub" / "sweeps" / "small.manifest.json").is_file()
    # this call's environment: a setting the fork server never saw is read, and refused
    bad = {**os.environ, "MEDPEFT_CHECKPOINT_INTERVAL_S": "soon"}
    assert _run_process(["train", "--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "-q"], log, bad) == 2
    assert log.read_text().splitlines() == ["medpeft: error: MEDPEFT_CHECKPOINT_INTERVAL_S='soon' is not a number of seconds >= 0; unset it or set e.g. 30"]


def _warm_hf_cache(cache, model_name):
    """What `medpeft prefetch` leaves behind: the timm weights file in the Hugging Face cache layout."""
    import timm
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    model = timm.create_model(model_name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    return repo


@pytest.mark.slow
def test_offline_sweep_names_what_is_missing_and_runs_from_a_warm_cache(cli, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads these when first imported, possibly by an earlier test: set both
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "grid.yaml").write_text(GRID.replace("weights: random\n", "weights: pretrained\n").replace("[linear, bitfit]", "[linear]"))
    res = cli("sweep", "run", "grid.yaml")
    assert res.code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "pretrained weights of test_vit" in line and "medpeft prefetch" in line
    assert not (tmp_path / "runs").exists()
    assert "prefetch needs the network" in cli("prefetch", "grid.yaml").stderr

    repo = _warm_hf_cache(tmp_path / "hf-cache", "test_vit")
    res = cli("sweep", "run", "grid.yaml")
    assert res.code == 0, res.stderr
    [row] = rows(tmp_path / "results" / "medpeft.duckdb")
    assert row["weights_source"].startswith(f"hf-hub:{repo}")
