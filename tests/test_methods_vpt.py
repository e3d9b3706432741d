"""Visual Prompt Tuning: prompt tokens in, prompt tokens out, and where VPT does not apply."""

import pytest
import torch
from helpers import single_thread  # noqa: F401  (one torch thread for tiny models)
from tiny_models import adapted, images, method_params, tiny_backbone

from medpeft_cli.errors import UserError
from medpeft_cli.methods.common import trainable_names

DEPTH, WIDTH = 6, 64


def test_prompt_counts():
    assert method_params("vpt-shallow", "test_vit", length=10) == 10 * WIDTH
    assert method_params("vpt-deep", "test_vit", length=10) == DEPTH * 10 * WIDTH
    _, model = adapted("vpt-deep", "test_vit", length=3)
    assert {f"blocks.{i}.vpt.tokens" for i in range(DEPTH)} <= set(trainable_names(model))


@pytest.mark.parametrize("method", ["vpt-shallow", "vpt-deep"])
def test_prompts_join_every_block_and_leave_before_pooling(method):
    bb = tiny_backbone("test_vit")
    x = images(2)
    tokens_in = []
    with torch.no_grad():
        plain_features = bb.model.forward_features(x)
    _, model = adapted(method, "test_vit", length=7)
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: tokens_in.append(a[0].shape[1]), with_kwargs=True) for b in model.blocks]
    with torch.no_grad():
        features = model.forward_features(x)
    for h in hooks:
        h.remove()
    n = plain_features.shape[1]
    assert features.shape == plain_features.shape  # prompts removed after the last block
    assert tokens_in == [n + 7] * DEPTH  # hooks see the block input after the prompts were inserted/replaced
    assert not torch.allclose(features, plain_features)


def test_deep_prompts_replace_the_previous_layers_prompts():
    _, model = adapted("vpt-deep", "test_vit", length=2)
    block = model.blocks[1]
    x = torch.randn(1, 1 + 2 + 4, WIDTH)  # class token, 2 prompts from block 0, 4 patches
    out = block.vpt(x)
    assert torch.equal(out[:, 1:3], block.vpt.tokens.unsqueeze(0)) and torch.equal(out[:, 3:], x[:, 3:])


def test_vpt_refuses_vits_without_absolute_position_embeddings():
    with pytest.raises(UserError, match="VPT needs a ViT with absolute position embeddings; eva uses relative/rotary positions"):
        adapted("vpt-deep", "eva")
    from medpeft_cli.methods import get_method, validate_options
    from medpeft_cli.models import create_backbone

    relpos = create_backbone("test_vit_relpos", "random", 3, 32, seed=0)
    info = get_method("vpt-shallow")
    with pytest.raises(UserError, match="absolute position embeddings"):
        info.apply(relpos, validate_options(info, {}))


def test_vpt_is_refused_on_swin_before_any_training():
    with pytest.raises(UserError, match="does not support backbone 'swin' .*family 'hvit'.*it supports: vit\\."):
        adapted("vpt-shallow", "swin")
