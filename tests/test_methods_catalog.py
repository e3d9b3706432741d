"""The method registry is found and read without torch: `medpeft methods`, `medpeft report` and the run
key need no catalogue file and no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medpeft_cli.config import build_spec, run_key
from medpeft_cli.methods import get_method, list_methods, method_catalog, speed_only_options
from medpeft_cli.methods.registry import NoOptions, register_method

HEAVY = ("torch", "timm", "peft", "diffusers", "accelerate", "transformers", "torchvision")


def _no_heavy_imports(code: str) -> None:
    check = f"\nimport sys\nbad = [m for m in {HEAVY!r} if m in sys.modules]\nassert not bad, bad\n"
    result = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_method_module_is_found_and_read_without_torch():
    _no_heavy_imports(
        "from medpeft_cli.methods import list_methods, method_catalog\n"
        "names = {(m['task'], m['name']) for m in method_catalog()}\n"
        "assert {('classification', 'lora'), ('classification', 'vpt-deep'), ('t2i', 'svdiff')} <= names, names\n"
        "assert len(names) == len(list_methods())\n"
    )


def test_methods_command_needs_no_torch():
    _no_heavy_imports(
        "from typer.testing import CliRunner\nfrom medpeft_cli.cli import app\n"
        "for args in (['methods'], ['methods', '--matrix'], ['methods', '--details'], ['methods', '--json'], ['methods', '--task', 't2i', '--details']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
    )


def test_every_module_of_the_method_packages_registers_something():
    package = Path(__file__).resolve().parents[1] / "medpeft_cli" / "methods"
    modules = {f"medpeft_cli.methods.{task}.{p.stem}" for task in ("classification", "t2i") for p in (package / task).glob("[!_]*.py")}
    assert modules == {m.apply.__module__ for m in list_methods()}


def test_the_catalogue_carries_what_the_site_shows():
    entries = {(m["task"], m["name"]): m for m in method_catalog()}
    lora = entries[("classification", "lora")]
    assert lora["kind"] == "reparameterised" and lora["knob"] == "rank" and lora["mergeable"] and lora["peft"]
    assert lora["url"] == "https://arxiv.org/abs/2106.09685" and lora["cite"].startswith("Hu et al.")
    assert entries[("classification", "ssf")]["kind"] == get_method("ssf").kind
    assert entries[("classification", "tsa")]["families"] == ["cnn"]
    assert entries[("t2i", "lora")]["families"] == ["unet"]


def test_speed_only_options_come_from_the_method_and_stay_out_of_the_run_key():
    assert speed_only_options("lora") == ("impl",) and speed_only_options("dora") == () and speed_only_options("nope") == ()
    fused = build_spec(flags={"method": "lora"}, overrides=["method.impl=fused"])
    plain = build_spec(flags={"method": "lora"}, overrides=["method.impl=peft"])
    assert "impl" not in fused.key_fields()["method"] and fused.speed_fields()["method.impl"] == "fused"
    assert run_key(fused) == run_key(plain)


def test_the_registry_refuses_inconsistent_facts():
    with pytest.raises(ValueError, match="not one of its options"):
        register_method("x", families={"vit"}, kind="selective", cite="c", default_lr=1e-3, speed_only=("impl",))
    with pytest.raises(ValueError, match="unknown kind"):
        register_method("x", families={"vit"}, kind="magic", cite="c", default_lr=1e-3)
    with pytest.raises(ValueError, match="unknown families"):
        register_method("x", families={"unet"}, kind="selective", cite="c", default_lr=1e-3, options=NoOptions)
