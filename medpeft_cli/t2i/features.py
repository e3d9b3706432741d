"""Feature extractors for FID/KID, chosen by `t2i.fid_features` / `--fid-features`:

    inception           Inception-v3 pool features (2048-d) of torch-fidelity, as torchmetrics uses them:
                        the standard FID feature space (Heusel et al., NeurIPS 2017), comparable with
                        published numbers. Its weights are a one-time download into torch's hub cache.
    dinov2              DINOv2 ViT-L/14 (timm vit_large_patch14_dinov2.lvd142m) at 224 px: the feature
                        space Stein et al. (NeurIPS 2023) found to agree better with human judgement.
    NAME                any timm model with its pretrained weights (HF hub cache), pooled features.
    NAME@random         the same architecture with random weights (seed 0): only for smoke tests; its
                        FIDs are comparable between runs that use it and nothing else.
    NAME@FILE           the architecture with weights from a local .safetensors/.pth file (e.g. a
                        medical encoder you trained).

Images are resized to the extractor's input size with antialiased bicubic interpolation (clean resizing
in the sense of Parmar et al., CVPR 2022; inception resizes itself the torch-fidelity way). A request
that cannot be met (offline without cached weights, unknown model) is one clear line, never a
silent switch to another feature space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medpeft_cli.errors import UserError

INCEPTION = "inception"
DINOV2 = "dinov2"
DINOV2_MODEL, DINOV2_SIZE = "vit_large_patch14_dinov2.lvd142m", 224
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name in the hub cache


@dataclass
class FeatureExtractor:
    spec: str
    module: nn.Module
    dim: int
    source: str  # which weights, exactly
    input_size: int | None  # None: the module takes uint8 images of any size (inception)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch_size: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float64 features (N, dim) on the CPU."""
        self.module.to(device).eval()
        out = []
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device).permute(0, 3, 1, 2)
            if self.input_size is not None:
                x = x.float() / 255.0
                if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
                    x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
                x = (x - mean) / std
            feats = self.module(x)
            out.append(feats.reshape(len(x), -1).double().cpu())
        return torch.cat(out)


def _inception() -> FeatureExtractor:
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise UserError("inception features need torch-fidelity (`pip install torch-fidelity`); or pass --fid-features <timm model>") from None
    from medpeft_cli.data.load import offline

    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if offline() and not cached.is_file():
        raise UserError(
            f"inception features need torch-fidelity's Inception-v3 weights ({cached} is missing) and medpeft is offline; "
            "run once with network access, or pass --fid-features dinov2|<timm model>[@random|@FILE]"
        )
    try:
        module = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except ModuleNotFoundError:
        raise UserError("inception features need torch-fidelity (`pip install torch-fidelity`); or pass --fid-features <timm model>") from None
    except Exception as exc:  # download failures surface as URLError/HTTPError/OSError
        raise UserError(f"could not get the Inception-v3 weights ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); pass --fid-features <timm model> or retry online") from None
    return FeatureExtractor(INCEPTION, module, 2048, f"torch-fidelity inception-v3-compat ({INCEPTION_WEIGHTS})", None)


def _timm(spec: str) -> FeatureExtractor:
    import timm

    from medpeft_cli.models import create_backbone

    name, _, weights = spec.partition("@")
    size = None
    if name == DINOV2:
        name, size = DINOV2_MODEL, DINOV2_SIZE
    if not name or not timm.is_model(name.split(".")[0]):
        raise UserError(f"unknown FID feature extractor {spec!r}; use inception, dinov2, a timm model name, NAME@random or NAME@FILE")
    if size is None:  # the model's own input size (its pretrained config; 224 when it has none)
        cfg = timm.models.get_pretrained_cfg(name)
        size = int(cfg.input_size[-1]) if cfg is not None else 224
    with torch.random.fork_rng(devices=[]):  # building the extractor must not move the run's random stream
        backbone = create_backbone(name, {"": "pretrained"}.get(weights, weights), 0, size, 0)
    model = backbone.model.eval().requires_grad_(False)
    cfg = model.pretrained_cfg
    dim = int(getattr(model, "num_features", 0)) or int(model(torch.zeros(1, 3, size, size)).shape[-1])
    return FeatureExtractor(spec, model, dim, f"timm {name}: {backbone.weights_source} ({backbone.checksum[:19]})", size,
                            tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3)))


def build_extractor(spec: str) -> FeatureExtractor:
    """The extractor named by `spec` (see the module docstring); UserError when it cannot be had."""
    spec = spec.strip()
    if spec == INCEPTION:
        return _inception()
    if spec.startswith(INCEPTION + "@"):
        raise UserError("inception takes no @weights: it always uses torch-fidelity's published Inception-v3 weights")
    return _timm(spec)
