"""Finding layer kinds in any module tree: transformer blocks, a patch embedding, convolutional stages.

Methods find their targets through these functions, not through one library's attribute names, so they
apply to timm, transformers and custom architectures alike.

- A transformer block is a module with exactly one attention child (an nn.MultiheadAttention, a child
  named attn/attention/self_attn/self_attention, or a class whose name contains "Attention", holding
  Linear layers) and at least two Linear layers in its other children (the feed-forward network). Of
  nested candidates the innermost is kept (a model with an attention-pooling head is not itself a block).
- The feed-forward network is one module when a single other child holds all those Linear layers (timm
  `mlp`, DINOv2 `mlp`, a custom `ffn`), else it is split over several children (BERT-style
  `intermediate` + `output`).
- A patch embedding is a Conv2d whose kernel equals its stride (> 1): images cut into patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

ATTENTION_NAMES = ("attn", "attention", "self_attn", "self_attention")


@dataclass
class Block:
    name: str  # dotted name in the model
    module: nn.Module
    attn_name: str  # dotted name of its attention module in the model
    attn: nn.Module
    mlp_name: str | None  # the feed-forward network as one module; None when it is split over several children
    mlp: nn.Module | None
    mlp_linears: list[tuple[str, nn.Linear]] = field(default_factory=list)  # dotted names in the model, in order


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def is_attention(name: str, module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    named = name in ATTENTION_NAMES or "attention" in type(module).__name__.lower()
    return named and _has_linear(module)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def transformer_blocks(model: nn.Module) -> list[Block]:
    """The model's transformer blocks in module order (empty when it has none)."""
    found: list[Block] = []
    for name, module in model.named_modules():
        attns = [(n, c) for n, c in module.named_children() if is_attention(n, c)]
        if len(attns) != 1:
            continue
        attn_child, attn = attns[0]
        others = [(n, c) for n, c in module.named_children() if c is not attn and _has_linear(c)]
        linears = [(_join(_join(name, n), ln), m) for n, c in others for ln, m in c.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) < 2:
            continue
        mlp_child = others[0][0] if len(others) == 1 else None
        found.append(Block(
            name, module, _join(name, attn_child), attn,
            _join(name, mlp_child) if mlp_child else None, others[0][1] if mlp_child else None, linears,
        ))  # fmt: skip
    # keep the innermost: drop a candidate that contains another one
    return [b for b in found if not any(o is not b and _inside(o.name, b.name) for o in found)]


def _inside(name: str, container: str) -> bool:
    return container == "" or name.startswith(container + ".")


def single_sequence(blocks: list[Block]) -> bool:
    """All blocks are children of one container (a plain ViT), not of several stages (Swin)."""
    parents = {b.name.rpartition(".")[0] for b in blocks}
    return len(blocks) > 0 and len(parents) == 1


def patch_embedding(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == module.stride and max(module.kernel_size) > 1:
            return name, module
    return None


def position_embeddings(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Learned absolute position embeddings: parameters (or embedding modules) named like pos_embed / position_embeddings."""
    names = ("pos_embed", "absolute_pos_embed", "pos_embedding", "position_embeddings", "position_embedding")
    found = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if parts[-1] in names or (len(parts) > 1 and parts[-2] in names):
            found.append((name, param))
    return found


def conv_stages(model: nn.Module) -> list[str]:
    """Names of the convolutional stages of a CNN without timm's feature_info.

    From the root, descend while a single child holds every convolution (a wrapper such as `encoder`);
    at the first level with several convolution-holding children, the first of them is the stem and
    the others are the stages (torchvision ResNet: conv1 | layer1..layer4; a plain Sequential CNN:
    its first conv | the other convs).
    """
    prefix, module = "", model
    while True:
        holders = [(n, c) for n, c in module.named_children() if any(isinstance(m, nn.Conv2d) for m in c.modules())]
        if len(holders) != 1 or isinstance(holders[0][1], nn.Conv2d):
            break
        prefix, module = _join(prefix, holders[0][0]), holders[0][1]
    return [_join(prefix, n) for n, _ in holders[1:]]


# Leaf names of an attention module's projections, as timm, transformers and common custom code spell them.
PROJECTION_NAMES = {
    "q": ("q", "query", "q_proj", "to_q", "wq", "q_lin"),
    "k": ("k", "key", "k_proj", "to_k", "wk", "k_lin"),
    "v": ("v", "value", "v_proj", "to_v", "wv", "v_lin"),
    "out": ("proj", "o_proj", "out_proj", "to_out", "dense", "o", "wo", "out_lin"),
}


def attention_projections(attn: nn.Module) -> dict[str, str]:
    """Role ('q', 'k', 'v', 'qkv', 'out') -> name of the Linear inside `attn` that plays it.

    By name first; else by kind: a fused projection has 3x as many outputs as inputs, three separate ones
    are the first three Linear layers with one shape, and the output projection is the last Linear.
    """
    linears = [(n, m) for n, m in attn.named_modules() if isinstance(m, nn.Linear) and n]
    roles: dict[str, str] = {}
    for role, aliases in PROJECTION_NAMES.items():
        hit = [n for n, _ in linears if n.rsplit(".", 1)[-1] in aliases]
        if len(hit) == 1:
            roles[role] = hit[0]
    fused = [n for n, m in linears if m.out_features == 3 * m.in_features]
    if not {"q", "k", "v"} <= set(roles) and len(fused) == 1:
        roles["qkv"] = fused[0]
    elif not {"q", "k", "v"} & set(roles) and len(linears) >= 4:
        first = linears[:3]
        if len({(m.in_features, m.out_features) for _, m in first}) == 1:
            roles.update(zip(("q", "k", "v"), (n for n, _ in first)))
    if "out" not in roles and linears and linears[-1][0] not in roles.values():
        roles["out"] = linears[-1][0]
    return roles
