"""Trainable parameters of every text-to-image method on an SD-1.x U-Net, counted on a shape-only copy.

The U-Net is built from the SD-1.x configuration (stable-diffusion-v1-5 unet/config.json: diffusers'
UNet2DConditionModel defaults with cross_attention_dim 768, attention_head_dim 8, sample_size 64) on
the meta device, so no weights are needed and nothing is downloaded; every method is applied by the
same code as in training (SV-Diff's SVD runs on meta tensors, shapes only).

    python benchmarks/t2i_param_counts.py            # markdown table for docs/t2i.md
"""

from __future__ import annotations

SD1_UNET = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}


def main() -> None:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from medpeft_cli.methods import list_methods, validate_options

    print("| method | trainable | % of U-Net | added by the method |")
    print("|---|---:|---:|---:|")
    for info in list_methods("t2i"):
        with init_empty_weights():
            unet = UNet2DConditionModel(**SD1_UNET)
        base = sum(p.numel() for p in unet.parameters())
        model = info.apply(unet, validate_options(info, {}))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        added = sum(p.numel() for p in model.parameters()) - base
        print(f"| `{info.name}` | {trainable:,} | {100 * trainable / base:.3f} | {added:,} |")
    print(f"\nU-Net parameters: {base:,}")


if __name__ == "__main__":
    main()
