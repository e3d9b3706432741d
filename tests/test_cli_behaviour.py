"""A CLI that behaves (issue 18, part B): output that survives pipes, `--version`, defaults in `--help`,
one stderr line for every mistake (usage errors and YAML included), Ctrl-C outside a run.

Runs through a real pipe use a child process with COLUMNS=80, the width a log or CI console reports.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from helpers import child_env

import medpeft_cli
from medpeft_cli.config import T2I_DEFAULTS, TrainOptions
from medpeft_cli.errors import UserError


def piped(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`medpeft ARGS` with stdout and stderr to pipes and COLUMNS=80."""
    return subprocess.run(
        [sys.executable, "-m", "medpeft_cli", *args], cwd=cwd, env=child_env(COLUMNS="80"), capture_output=True, text=True, timeout=300
    )


def cells(stdout: str) -> set[str]:
    """Every table cell of rich's box output, stripped."""
    return {c.strip() for line in stdout.splitlines() if "│" in line for c in line.split("│")}


# --- output through a pipe ------------------------------------------------------------------------


def test_methods_and_datasets_are_whole_in_a_pipe_at_80_columns():
    from medpeft_cli.data import list_datasets
    from medpeft_cli.methods import list_methods

    methods = piped("methods")
    assert methods.returncode == 0, methods.stderr
    assert "…" not in methods.stdout
    table = cells(methods.stdout)
    for info in list_methods("classification"):  # every name, kind and reference whole, each in one cell
        assert {info.name, info.kind, info.cite.split(":")[0]} <= table, info.name
    assert max(map(len, methods.stdout.splitlines())) > 80  # the table took the width it needs

    listed = piped("datasets", "list")
    assert listed.returncode == 0, listed.stderr
    assert "…" not in listed.stdout
    table = cells(listed.stdout)
    for entry in list_datasets():
        assert {entry.name, entry.modality, entry.license} <= table, entry.name


def test_t2i_methods_table_is_whole_in_a_pipe():
    from medpeft_cli.methods import list_methods

    res = piped("methods", "--task", "t2i")
    assert res.returncode == 0, res.stderr
    table = cells(res.stdout)
    assert "…" not in res.stdout
    for info in list_methods("t2i"):
        assert {info.name, info.summary, info.cite} <= table, info.name


@pytest.mark.slow
def test_parameter_counts_are_whole_in_a_pipe():
    res = piped("methods", "--backbone", "test_vit", "--image-size", "32")
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    from medpeft_cli.methods.accounting import backbone_table
    from medpeft_cli.models.backbones import shape_backbone

    rows = backbone_table(shape_backbone("test_vit", 32, 3), True)
    table = cells(res.stdout)
    lines = res.stdout.splitlines()
    for r in rows:
        if "error" not in r:
            assert {r["method"], f"{r['method_params']:,}", f"{r['total_params']:,}"} <= table, r["method"]
        elif "families" not in r:  # the reason a method cannot be counted: one unbroken line
            assert f"{r['method']}: does not apply: {r['error']}" in lines, r["method"]


@pytest.mark.slow
def test_sweep_plan_show_lists_every_run_key_whole(tmp_path):
    grid = tmp_path / "a-grid-with-a-rather-long-name-for-its-manifest.yaml"
    grid.write_text(
        "dataset: synthetic-lesions\nweights: random\nimage_size: 32\n"
        "grid:\n  backbone: [test_vit]\n  method: [linear, {name: lora, rank: 4}]\n  seed: [0, 1]\n"
    )
    res = piped("sweep", "plan", str(grid), "--show", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = next(line.split(": ", 1)[1] for line in res.stdout.splitlines() if line.startswith("manifest: "))
    assert Path(tmp_path, manifest).is_file()  # the path printed whole on its line
    from medpeft_cli.sweep.manifest import read_manifest

    keys = [e.run_key for e in read_manifest(Path(tmp_path, manifest)).entries]
    table = cells(res.stdout)
    assert len(keys) == 4 and set(keys) <= table and "…" not in res.stdout


@pytest.mark.slow
def test_export_prints_whole_paths_and_load_line_in_a_pipe(cli, tmp_path):
    from helpers import TINY

    assert cli("train", *TINY, "-q", "--no-site").code == 0
    [run_dir] = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    target = tmp_path / ("a-folder-name-long-enough-to-cross-eighty-columns-" * 2) / "merged-weights.safetensors"
    res = piped("export", str(run_dir), "--merge", "--out", str(target), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and lines[0].endswith(f": {target}")
    assert lines[2].startswith("load with: timm.create_model(") and f"load_file('{target}')" in lines[2]
    assert target.is_file()


def test_progress_lines_are_never_wrapped_in_a_log():
    """Epoch lines and a long banner on stderr (a Slurm log): one line each, whatever COLUMNS says."""
    code = (
        "from medpeft_cli.console import err\n"
        "from medpeft_cli.train.progress import EpochProgress, Report\n"
        "p = EpochProgress(err, banner='training lora on d with ' + 'x' * 150 + '.py:factory (random weights), seed 0')\n"
        "Report(p).log('latent cache hit [' + 'y' * 120 + ']')\n"
        "p.start(2, 100)\n"
        "p.epoch_done({'epoch': 1, 'train_loss': 1.0, 'train_images_per_s': 5.0}, 'epoch 1/2 ' + 'z' * 140)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=child_env(COLUMNS="80"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("training lora") and lines[0].endswith("seed 0") and "x" * 150 in lines[0]
    assert lines[1] == "latent cache hit [" + "y" * 120 + "]"  # brackets are text, not markup
    assert lines[2] == "epoch 1/2 " + "z" * 140


def test_the_cli_makes_its_consoles_in_one_place():
    """No module but console.py creates a rich Console (so every output follows the same pipe rules)."""
    sources = [p for p in Path(medpeft_cli.__file__).parent.rglob("*.py") if p.name != "console.py"]
    makers = [str(p) for p in sources if "Console(" in p.read_text(encoding="utf-8")]
    assert makers == []


# --- --version and --help -------------------------------------------------------------------------


def test_version_names_medpeft_and_the_packages_that_compute_results(cli):
    res = cli("--version")
    assert res.code == 0 and res.stderr == ""
    lines = res.stdout.splitlines()
    assert lines[0] == f"medpeft {medpeft_cli.__version__}"
    assert lines[1].startswith("git commit ")
    for package in ("torch", "timm", "peft", "accelerate"):
        assert f"{package} {metadata.version(package)}" in lines[2]


def _options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option"]


def test_every_option_of_every_command_has_help():
    import typer.main

    from medpeft_cli.cli import app

    missing = []

    def walk(command, path):
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*path, name])
        missing.extend(f"{' '.join(path)} {p.opts[0]}" for p in _options(command) if not (p.help or "").strip())

    walk(typer.main.get_command(app), ["medpeft"])
    assert missing == []


def test_train_help_shows_every_default_read_from_the_run_spec(cli):
    res = cli("train", "--help")
    assert res.code == 0
    text = " ".join(res.stdout.split())  # Click wraps help text: compare with whitespace normalised
    fields = TrainOptions.model_fields
    assert f"--epochs <int> Epochs of training. [default: {fields['epochs'].default}]" in text
    assert f"[default: {fields['batch_size'].default}]" in text.split("--batch-size", 1)[1].split("--lr", 1)[0]
    assert f"[default: breastmnist (t2i: {T2I_DEFAULTS['dataset']})]" in text
    assert "[default: 1000; tiny-sd 100]" in text and "<timm name>[@random|@FILE]" in text  # no markup eats brackets
    import typer.main

    from medpeft_cli.cli import app

    train = typer.main.get_command(app).commands["train"]
    switches = {"--config", "--set", "--no-site", "--resume", "--quiet", "--force", "--help"}  # inputs and on/off flags
    for option in _options(train):
        if option.opts[0] not in switches:  # the default in its help text, or one Typer shows itself
            assert "[default: " in option.help or (option.default is not None and option.show_default is not False), option.opts[0]


def test_command_lists_show_each_first_paragraph_whole(cli):
    import typer.main

    from medpeft_cli.cli import app

    root = typer.main.get_command(app)
    for args, group in ((["--help"], root), (["sweep", "--help"], root.commands["sweep"])):
        res = cli(*args)
        listing = " ".join(res.stdout.split("Commands:", 1)[1].split())
        assert res.code == 0 and "..." not in listing
        for name, command in group.commands.items():
            first = " ".join(command.help.strip().split("\n\n")[0].split())
            assert f"{name} {first}" in listing, name


def test_train_help_follows_a_changed_default(monkeypatch):
    """The help reads the model: a new default in config.py shows without retyping it."""
    from medpeft_cli.helptext import spec_default, with_default

    monkeypatch.setattr(TrainOptions.model_fields["epochs"], "default", 77)
    assert spec_default("train.epochs") == "77"
    assert with_default("Epochs.", "train.epochs") == "Epochs.  [default: 77]"
    with pytest.raises(ValueError, match="pass none="):
        spec_default("train.lr")  # a None default must say what it means


# --- one line on stderr for every mistake ---------------------------------------------------------

TINY_SPEC = ["--dataset", "synthetic-lesions", "--backbone", "test_vit", "--weights", "random", "--image-size", "32", "--no-site"]


def yaml_file(name: str, text: str):
    def setup(tmp_path: Path) -> str:
        (tmp_path / name).write_text(text)
        return name  # the command runs in tmp_path

    return setup


MISTAKES = [
    ("unknown dataset, no banner first", lambda p: ["train", "--dataset", "nope", "--no-site"], "unknown dataset 'nope'"),
    ("unknown option", lambda p: ["train", "--bogus"], "No such option: --bogus (see `medpeft train --help`)"),
    ("not a number", lambda p: ["train", "--epochs", "abc"], "Invalid value for '--epochs'"),
    ("unknown command", lambda p: ["trian"], "No such command 'trian'. Did you mean 'train'? (see `medpeft --help`)"),
    ("missing argument", lambda p: ["eval"], "Missing argument 'run_dir' (see `medpeft eval --help`)"),
    ("config: bad YAML", lambda p: ["train", "-c", yaml_file("c.yaml", "train: {epochs: 2\n")(p)], "is not valid YAML at line"),
    ("config: duplicated key", lambda p: ["train", "-c", yaml_file("c.yaml", "method: lora\ntrain:\n  epochs: 2\n  lr: 0.1\n  epochs: 20\n")(p)],
     "at line 5, column 3: duplicate key 'epochs' (first at line 3)"),
    ("config: duplicated key in a flow mapping", lambda p: ["train", "-c", yaml_file("c.yaml", "method: {name: lora, name: full}\n")(p)],
     "duplicate key 'name' (first at line 1)"),
    ("config: empty file", lambda p: ["train", "-c", yaml_file("c.yaml", "# only a comment\n")(p)], "config file c.yaml is empty"),
    ("config: boolean epochs", lambda p: ["train", "-c", yaml_file("c.yaml", "train: {epochs: true}\n")(p)],
     "train.epochs: Value error, expected a number, not the boolean true"),
    ("--set boolean data fraction", lambda p: ["train", "--set", "data_fraction=true"], "data_fraction: Value error, expected a number, not the boolean true"),
    ("--set boolean method option", lambda p: ["train", *TINY_SPEC, "--method", "lora", "--set", "method.rank=true"],
     "invalid options for method 'lora': rank: expected a number, not the boolean true"),
    ("grid: duplicated axis", lambda p: ["sweep", "plan", yaml_file("g.yaml", "dataset: synthetic-lesions\ngrid:\n  seed: [0, 1]\n  seed: [2]\n")(p)],
     "g.yaml is not valid YAML at line 4, column 3: duplicate key 'seed' (first at line 3)"),
    ("grid: empty file", lambda p: ["sweep", "plan", yaml_file("g.yaml", "")(p)], "config file g.yaml is empty"),
    ("grid: boolean axis value", lambda p: ["sweep", "plan", yaml_file("g.yaml", "dataset: synthetic-lesions\nweights: random\nbackbone: test_vit\ngrid:\n  epochs: [true, 2]\n")(p)],
     "train.epochs: Value error, expected a number, not the boolean true"),
    ("grid: boolean tune setting", lambda p: ["sweep", "plan", yaml_file("g.yaml", "dataset: synthetic-lesions\ntune: {trials: true}\ngrid:\n  lr: tuned\n")(p)],
     "invalid tune settings: trials: Value error, expected a number, not the boolean true"),
]


@pytest.mark.parametrize("name, setup, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_stderr_line_and_writes_nothing(cli, tmp_path, name, setup, message):
    args = setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*args)
    assert res.code == 2, (res.code, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("medpeft: error: "), res.stderr
    assert message in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no runs/, results/, site/, sweeps/


def test_a_usage_error_is_one_line_from_a_real_process():
    res = piped("train", "--epochs", "many")
    assert res.returncode == 2 and res.stdout == ""
    [line] = res.stderr.splitlines()  # no usage block, no box
    assert line.startswith("medpeft: error: Invalid value for '--epochs'") and line.endswith("(see `medpeft train --help`)")


def test_ctrl_c_outside_a_run_is_one_line_and_exit_130(cli, monkeypatch):
    import medpeft_cli.data

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(medpeft_cli.data, "list_datasets", interrupted)
    res = cli("datasets", "list")
    assert res.code == 130
    assert res.stderr.splitlines() == ["medpeft: interrupted"]  # promises nothing it cannot keep


# --- the YAML reader ------------------------------------------------------------------------------


def test_yaml_reader_refuses_duplicates_and_keeps_merge_keys():
    from medpeft_cli import yamlfile

    assert yamlfile.load("base: &b {lr: 0.1, epochs: 2}\nrun:\n  <<: *b\n  epochs: 5\n") == {"base": {"lr": 0.1, "epochs": 2}, "run": {"lr": 0.1, "epochs": 5}}
    assert yamlfile.load("a: [1, 1]\nb: {x: 1}\nc: {x: 1}\n") == {"a": [1, 1], "b": {"x": 1}, "c": {"x": 1}}  # equal values, distinct keys
    with pytest.raises(yaml.YAMLError) as exc:
        yamlfile.load("grid:\n  - {seed: 0}\n  - {seed: 1, seed: 2}\n")
    assert "duplicate key 'seed' (first at line 3)" in str(exc.value)
    with pytest.raises(yaml.YAMLError, match="duplicate key True"):
        yamlfile.load("1: a\ntrue: b\n")  # one Python key, so one of them would vanish


def test_booleans_are_not_numbers_anywhere_a_spec_takes_one():
    from medpeft_cli.config import build_spec

    for override in ("train.epochs=true", "train.batch_size=false", "train.lr=true", "seed=true", "image_size=true", "shots=true"):
        with pytest.raises(UserError, match="expected a number, not the boolean"):
            build_spec(None, {}, [override])
    with pytest.raises(UserError, match="t2i.fid_seeds: Value error, expected numbers, not booleans"):
        build_spec(None, {}, ["task=t2i", "t2i.fid_seeds=[true, 2]"])
    assert build_spec(None, {}, ["train.compile=true"]).train.compile is True  # a real boolean option still is one
    assert build_spec(None, {}, ["train.epochs=3"]).train.epochs == 3
