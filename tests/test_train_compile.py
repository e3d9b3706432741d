"""`medpeft train --compile`: the model is compiled in place, the run stores as usual, and the flag is
not part of the run key (it changes speed, not the experiment).

Inductor needs minutes to compile even test_vit on this CPU, so the test swaps in dynamo's "eager"
backend: the same graph capture and in-place module compile, without code generation.
"""

import json

import pytest
from helpers import TINY
from torch import nn


@pytest.fixture
def compiled(monkeypatch):
    from medpeft_cli.train import classify

    monkeypatch.setattr(classify, "COMPILE_BACKEND", "eager")
    calls = []
    original = nn.Module.compile

    def recording_compile(self, *args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "compile", recording_compile)
    return calls


@pytest.mark.slow
def test_compile_trains_stores_and_keeps_the_run_key(cli, compiled, tmp_path):
    from medpeft_cli.config import build_spec, run_key
    from medpeft_cli.run import resolve

    # 240 training images in 5 equal batches and one evaluation batch per split: two graphs to capture.
    args = [*TINY, "--data-fraction", "0.1", "--batch-size", "48", "--set", "train.eval_batch_size=600", "--method", "lora", "--no-site"]
    res = cli("train", *args, "--compile")
    assert res.code == 0, res.stderr
    assert compiled == ["eager"]
    row = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert row["status"] == "ok" and 0 <= row["test_macro_f1"] <= 1
    assert '"compile"' not in row["spec_json"]
    # what computed the row is recorded beside the key: the compiled graph and LoRA's fused layer
    assert json.loads(row["speed_json"]) == {"method.impl": "fused", "train.compile": True}
    plain = build_spec(flags={"dataset": "synthetic-lesions", "weights": "random", "backbone": "test_vit", "image_size": 32, "train.epochs": 1, "data_fraction": 0.1, "train.batch_size": 48, "method": "lora"},
                       overrides=["train.eval_batch_size=600"])  # fmt: skip
    assert row["run_key"] == run_key(resolve(plain)[0])  # the same run without --compile has the same key


def test_compile_is_refused_for_text_to_image(cli):
    res = cli("train", "--task", "t2i", "--compile", "--no-site")
    assert res.code == 2 and "train.compile applies to classification runs only" in res.stderr
