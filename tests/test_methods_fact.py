"""FacT: parameter counts of the two tensor formats, the increment they add, and when FacT does not apply."""

import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import adapted, method_params, perturb_trainable

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import trainable_names

DEPTH, WIDTH = 6, 64
SLICES = DEPTH * (3 + 1 + 3 + 3)  # d x d slices of qkv (3), proj (1), fc1 and fc2 (MLP ratio 3 in test_vit)


@pytest.mark.parametrize("rank", [4, 8])
def test_fact_counts_match_the_paper_formulas(rank):
    assert method_params("fact-tt", "test_vit", rank=rank) == 2 * WIDTH * rank + SLICES * rank**2
    assert method_params("fact-tk", "test_vit", rank=rank) == 2 * WIDTH * rank + rank**3 + SLICES * rank


def test_shared_factors_are_saved_once():
    _, model = adapted("fact-tk", "test_vit")
    names = trainable_names(model)
    assert {"fact.u", "fact.v", "fact.core"} <= set(names)
    assert not any(n.endswith(".shared.u") for n in model.state_dict())


@pytest.mark.parametrize("method", ["fact-tt", "fact-tk"])
def test_increment_equals_the_dense_delta_weight(method):
    _, model = adapted(method, "test_vit", scale=0.5)
    perturb_trainable(model)
    fc2 = model.blocks[1].mlp.fc2  # 192 -> 64: three input slices, one output slice
    h = torch.randn(4, fc2.in_features)
    with torch.no_grad():
        delta = fc2.fact.delta_weight()
        assert delta.shape == fc2.weight.shape
        assert torch.allclose(fc2(h), torch.nn.functional.linear(h, fc2.weight + delta, fc2.bias), atol=1e-5)


def test_fact_refuses_mlps_that_are_not_whole_multiples_of_the_width():
    from timm.models.eva import Eva

    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.models.backbones import Backbone
    from medpeft_cli.models.timm_source import head_name as timm_head

    model = Eva(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=3, swiglu_mlp=True, mlp_ratio=4 * 2 / 3)
    bb = Backbone(model, "eva02-swiglu", "vit", timm_head(model), "random", 0, "")
    info = get_method("fact-tt")
    with pytest.raises(UserError, match="FacT needs every block Linear to be a multiple of the width 64"):
        info.apply(bb, validate_options(info, {}))
