"""Learning-rate search: Optuna studies on the validation split, pruning, shared storage, and reuse
of the best lr by sweeps (recorded on every row that used it)."""

import math
import multiprocessing as mp
import textwrap

import duckdb
import pytest

from medpeft_cli.errors import RunDiverged
from medpeft_cli.sweep.tune import TuneGroup, best_lr, fail_running_trials, run_study, study_progress


def group(trials=12, study="synthetic-lesions.test_vit.linear.x"):
    spec = {"backbone": "test_vit", "image_size": 32, "method": {"name": "linear"}, "train": {"epochs": 3, "lr": None}}
    return TuneGroup(study=study, spec=spec, trials=trials, lr_min=1e-5, lr_max=1e-1, pruner="median", seed=0)


def quality(lr: float) -> float:
    """A made-up validation F1 that peaks at lr = 1e-3."""
    return max(0.0, 1.0 - abs(math.log10(lr) + 3.0) / 3.0)


class FakeOutcome:
    def __init__(self, row):
        self.row = row


def fake_train(spec, force=False, progress=None, lr_origin=None):
    """Stands in for a training run: reports three epochs of validation F1 to the progress hook."""
    lr = spec.train.lr
    assert spec.data_fraction == 1.0 and spec.seed == 0 and force  # trials use the tuning settings
    if lr > 0.05:
        raise RunDiverged("training loss became nan in epoch 1; stored as run k with status diverged; lower the learning rate")
    progress.start(3, 100)
    for epoch in (1, 2, 3):
        record = {"epoch": epoch, "val_macro_f1": quality(lr) * epoch / 3, "train_loss": 1.0, "train_images_per_s": 1.0}
        progress.epoch_done(record, f"epoch {epoch}/3")
    progress.stop()
    return FakeOutcome({"val_macro_f1": quality(lr)})


@pytest.mark.slow
def test_study_prunes_bad_trials_and_fixes_its_answer(tmp_path, monkeypatch):
    import optuna

    monkeypatch.setattr("medpeft_cli.run.train", fake_train)
    storage = str(tmp_path / "journal.log")
    g = group(trials=12)
    assert best_lr(storage, g) is None and study_progress(storage, g) == 0

    answer = run_study(storage, g, echo=lambda line: None)
    study = optuna.load_study(study_name=g.study, storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)))
    states = [t.state.name for t in study.trials]
    assert len(states) == 12 and set(states) <= {"COMPLETE", "PRUNED"}
    by_median = [t for t in study.trials if t.state.name == "PRUNED" and "diverged" not in t.user_attrs]
    assert by_median and all(max(t.intermediate_values) == 2 for t in by_median)  # stopped after epoch 2, never epoch 1
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert answer.lr == best.params["lr"] and answer.value == pytest.approx(quality(answer.lr))
    assert answer.trials == 12 and 1e-5 <= answer.lr <= 1e-1
    for t in study.trials:
        if t.params["lr"] > 0.05:
            assert t.state.name == "PRUNED" and "nan" in t.user_attrs["diverged"]  # a diverged trial counts as pruned

    # The answer is the best of the first 12 finished trials: more trials later do not change it,
    # so every run of the sweep uses the same lr whatever other workers add.
    run_study(storage, group(trials=16), worker=1, echo=lambda line: None)
    assert best_lr(storage, g) == answer


def _worker(storage, worker):
    import medpeft_cli.sweep.tune as tune

    def fake_objective(g, echo):
        def objective(trial):
            return quality(trial.suggest_float("lr", g.lr_min, g.lr_max, log=True))

        return objective

    tune._objective = fake_objective  # no training: this test is about the shared storage
    run_study(storage, group(trials=8), worker=worker, echo=lambda line: None)


@pytest.mark.slow
def test_two_workers_share_one_journal_study(tmp_path):
    storage = str(tmp_path / "journal.log")
    ctx = mp.get_context("forkserver")
    workers = [ctx.Process(target=_worker, args=(storage, w)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    answer = best_lr(storage, group(trials=8))
    assert answer is not None and answer.trials == 8
    assert study_progress(storage, group(trials=8)) == 8


def test_killed_workers_running_trials_can_be_failed(tmp_path):
    import optuna

    storage = str(tmp_path / "journal.log")
    backend = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    study = optuna.create_study(storage=backend, study_name=group().study, direction="maximize")
    study.ask()  # a trial whose worker died: it stays RUNNING in a journal
    assert best_lr(storage, group(trials=1)) is None
    assert fail_running_trials(storage, group()) == 1
    assert study.trials[0].state.name == "FAIL"


GRID = """\
name: tuned
backbone: test_vit
weights: random
dataset: synthetic-lesions
image_size: 32
train: {epochs: 1, batch_size: 64}
grid:
  method: [linear]
  data_fraction: [0.2]
  lr: tuned
tune: {trials: 2, data_fraction: 0.2, storage: tune/journal.log}
"""


@pytest.mark.slow
def test_tune_stores_the_best_lr_and_sweep_reuses_it(cli, tmp_path):
    (tmp_path / "grid.yaml").write_text(textwrap.dedent(GRID))
    waiting = cli("sweep", "plan", "grid.yaml")
    assert "0 to run, 1 waiting for a tuned lr (1 studies)" in waiting.stdout
    assert cli("sweep", "run", "grid.yaml", "--no-tune").code == 2

    tuned = cli("tune", "grid.yaml")
    assert tuned.code == 0, tuned.stderr
    assert "synthetic-lesions.test_vit.linear." in tuned.stdout and "2/2" in tuned.stdout
    assert (tmp_path / "tune" / "journal.log").is_file()
    assert "0 done, 1 to run" in cli("sweep", "plan", "grid.yaml").stdout

    ran = cli("sweep", "run", "grid.yaml", "--no-tune")  # no new trials: the stored answer is used
    assert ran.code == 0, ran.stderr
    con = duckdb.connect(str(tmp_path / "results" / "medpeft.duckdb"), read_only=True)
    lr, source, trials, study = con.execute("SELECT lr, lr_source, tuned_lr_trials, tune_study FROM runs").fetchone()
    con.close()
    from medpeft_cli.sweep.manifest import read_manifest

    manifest = read_manifest(tmp_path / "sweeps" / "tuned.manifest.json")
    answer = best_lr(manifest.tune_storage, manifest.tune_groups[0])
    assert (lr, source, trials, study) == (answer.lr, "tuned", 2, answer.study)
    assert study_progress(manifest.tune_storage, manifest.tune_groups[0]) == 2
