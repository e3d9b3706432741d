import subprocess
import sys

import pytest

from medpeft_cli.config import PROTOCOL_VERSION, RunSpec, build_spec, run_key
from medpeft_cli.errors import UserError
from medpeft_cli.run import resolve


def key_of(**flags) -> str:
    spec, _, _ = resolve(build_spec(flags=flags))
    return run_key(spec)


def test_defaults_are_the_embedded_offline_run():
    spec = RunSpec()
    assert (spec.dataset, spec.backbone, spec.weights, spec.image_size, spec.method.name) == ("breastmnist", "cifar_resnet20", "pretrained", 32, "bn")
    assert RunSpec(task="t2i").method.name == "lora" and RunSpec(method={"name": "ssf"}).method.name == "ssf"


def test_a_method_without_a_name_is_the_tasks_default():
    assert RunSpec(method={"stage": "all"}).method.name == "bn"
    assert RunSpec(task="t2i", method={"rank": 4}).method.name == "lora"


def test_key_ignores_spelling_out_defaults_but_not_changes():
    base = key_of(method="lora")
    assert key_of(method="lora", **{"train.lr": 1e-3}) == base  # 1e-3 is LoRA's default lr
    spelled = resolve(build_spec(flags={"method": "lora"}, overrides=["method.rank=8", "method.alpha=8"]))[0]
    assert run_key(spelled) == base
    assert key_of(method="lora", seed=1) != base
    assert key_of(method="bitfit") != base


def test_key_ignores_output_locations(tmp_path):
    a = resolve(build_spec(flags={"output.db": tmp_path / "a.duckdb"}))[0]
    b = resolve(build_spec(flags={"output.runs_dir": tmp_path / "elsewhere"}))[0]
    assert run_key(a) == run_key(b)


def test_key_is_identical_in_another_process():
    code = "from medpeft_cli.config import build_spec, run_key; from medpeft_cli.run import resolve; print(run_key(resolve(build_spec(flags={'seed': 3}))[0]))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == key_of(seed=3)


def test_key_depends_on_protocol_version(monkeypatch):
    spec = resolve(RunSpec())[0]
    before = run_key(spec)
    monkeypatch.setattr("medpeft_cli.config.PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    assert run_key(spec) != before


def test_yaml_then_flags_then_set(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: {name: lora, rank: 16}\nseed: 4\ntrain: {epochs: 3}\n")
    spec = build_spec(cfg, {"seed": 5}, ["method.rank=4", "train.lr=3e-4"])
    assert spec.seed == 5 and spec.train.epochs == 3 and spec.train.lr == 3e-4
    assert spec.method.name == "lora" and spec.method.options == {"rank": 4}


def test_changing_method_on_the_command_line_drops_old_options(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: {name: lora, rank: 16}\n")
    assert build_spec(cfg, {"method": "bitfit"}).method.options == {}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.lr=-1"], "train.lr: Input should be greater than 0"),
        (["data_fraction=1.5"], "data_fraction"),
        (["train.epochs=-2"], "train.epochs"),
        (["trian.epochs=2"], "trian: unknown key"),
        (["seed"], "is not KEY=VALUE"),
    ],
)
def test_bad_values_are_one_clear_line(overrides, expected):
    with pytest.raises(UserError) as info:
        build_spec(overrides=overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: lora\n  seed: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        build_spec(cfg)


def test_unknown_method_option_is_refused():
    with pytest.raises(UserError, match="invalid options for method 'lora': rnak: unknown option"):
        resolve(build_spec(flags={"method": "lora"}, overrides=["method.rnak=4"]))
