"""What the docs and the quiet of a t2i run promise, checked against behaviour (issue 18, part B).

- docs/methods.md's ViT-B/16 and ResNet-50 parameter tables agree with `medpeft methods --backbone`:
  a method it cannot count here (BOFT without peft's CUDA extension) has no count in the docs, and
  every count it gives is one the docs print for that method.
- Loading, building and sampling the text-to-image pipeline draws no diffusers/transformers progress
  bar on stderr (medpeft prints its own progress lines).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import REPO, child_env

DOC = REPO / "docs" / "methods.md"


def doc_table(heading: str) -> dict[str, list[str]]:
    """Method name -> the count cells of its rows in the docs table whose first header cell is `heading`."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading} |"))
    counts: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        label, count = [c.strip() for c in line.strip("|").split("|")][:2]
        for name in re.split(r"\s*/\s*", re.sub(r"\s*\(.*", "", label)):  # "bitfit / bias", "lora (r 8, qkv)"
            counts.setdefault(name, []).append(count)
    return counts


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backbone, heading", [("vit_base_patch16_224", "ViT-B/16 method"), ("resnet50", "ResNet-50 method")])
def test_documented_counts_agree_with_methods_backbone(backbone, heading):
    from medpeft_cli.methods.accounting import backbone_table
    from medpeft_cli.models.backbones import shape_backbone

    documented = doc_table(heading)
    rows = {r["method"]: r for r in backbone_table(shape_backbone(backbone, 224, 3), True)}
    for name, counts in documented.items():
        row = rows[name]
        if "error" in row:  # the CLI cannot count it here: the docs must not print a count either
            assert set(counts) == {"–"}, (name, counts, row["error"])
        elif "–" not in counts:  # counted by both (a CUDA machine counts BOFT, which the docs leave out)
            assert f"{row['method_params']:,}" in counts, (name, counts, row["method_params"])


NO_BARS = """
import sys
from pathlib import Path

import torch

from medpeft_cli.t2i.generate import generate, make_sampler
from medpeft_cli.t2i.pipeline import load_pipeline
from medpeft_cli.t2i.tiny import MAX_TOKENS

pipe = load_pipeline("tiny-sd", Path(sys.argv[1]))  # a fresh data dir: the tiny pipeline is built and saved first
sampler = make_sampler(pipe, pipe.unet, torch.device("cpu"), torch.float32)
embeds = torch.zeros(1, MAX_TOKENS, pipe.text_encoder.config.hidden_size)
print(generate(sampler, embeds, embeds, seed=0, resolution=32, steps=2, guidance_scale=7.5, batch_size=1).shape)
"""


@pytest.mark.slow
def test_the_t2i_pipeline_draws_no_progress_bar(tmp_path):
    res = subprocess.run([sys.executable, "-c", NO_BARS, str(tmp_path / "data")], env=child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(1, 32, 32, 3)"
    assert res.stderr == ""  # no tqdm bar ("\r 50%|...| 1/2"), no advice-level logging
