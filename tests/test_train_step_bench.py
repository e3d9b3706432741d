"""benchmarks/train_step.py runs medpeft's loop and the hand-written one and writes the ratios it promises."""

import gc
import importlib.util
import json

import pytest

from helpers import REPO


@pytest.fixture
def harness(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the harness sets it; restored after the test
    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "benchmarks" / "train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    gc.unfreeze()  # main() freezes the collector's view of what was imported; give the rest of the session it back


def test_harness_writes_json_with_both_loops_and_the_ratios(harness, tmp_path, capsys):
    path = harness.main([
        "--backbone", "test_vit", "--img-size", "32", "--batch", "4", "--method", "full,lora:impl=peft:targets=[qkv,fc1]",
        "--warmup", "1", "--steps", "2", "--window", "1", "--eval-batch", "4", "--eval-batches", "1", "--memory-steps", "1",
        "--threads", "1", "--out", str(tmp_path),
    ])  # fmt: skip
    assert path.parent == tmp_path and path.name.startswith("train_step-cpu-") and path.name.endswith("-test_vit-32px-bs4.json")
    report = json.loads(path.read_text())
    assert report["device"].startswith("CPU") and report["threads"] == 1 and report["precision"] == "no"
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["full", "lora:impl=peft:targets=[qkv,fc1]"]
    for row in rows.values():
        for loop in ("medpeft", "hand"):
            assert row[f"{loop}_img_s"] > 0 and row[f"{loop}_eval_img_s"] > 0
            assert len(row[f"{loop}_windows_s"]) == 2  # steps / window, paired
        assert row["medpeft_vs_hand"] > 0 and row["medpeft_vs_hand_eval"] > 0 and row["saved_mb"] > 0
        assert row["medpeft_vs_full"] > 0 and row["hand_vs_full"] > 0
    assert rows["full"]["medpeft_vs_full"] == 1.0
    assert rows["lora:impl=peft:targets=[qkv,fc1]"]["trainable_params"] < rows["full"]["trainable_params"]
    assert "| `lora:impl=peft:targets=[qkv,fc1]` |" in capsys.readouterr().out  # the markdown table


def test_method_list_keeps_commas_inside_brackets(harness):
    assert harness.split_top_level("full,lora:targets=[qkv,fc1],bitfit") == ["full", "lora:targets=[qkv,fc1]", "bitfit"]
    assert harness.parse_method("lora:rank=4:targets=[q,v]") == ("lora", {"rank": 4, "targets": ["q", "v"]})


def test_bad_method_option_stops_before_any_measurement(harness, tmp_path):
    from medpeft_cli.errors import UserError

    with pytest.raises(UserError, match="impl"):
        harness.main(["--backbone", "test_vit", "--img-size", "32", "--method", "full,lora:impl=fast", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())
