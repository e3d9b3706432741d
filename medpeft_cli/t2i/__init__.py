"""The text-to-image track: parameter-efficient fine-tuning of the Stable Diffusion U-Net.

    pipeline.py  a diffusers SD pipeline (HF id, local folder or the embedded `tiny-sd`), offline
    captions.py  image-caption data: the caption column of a dataset, the synthetic captioned set
    latents.py   VAE latents and text embeddings computed once per dataset/resolution, cached on disk
    methods.py   which U-Net parameters train (registered with task="t2i")
    loop.py      noise-prediction training (Accelerate), optional EMA
    generate.py  sampling from held-out prompts with fixed seeds, sample grid
    features.py  pluggable feature extractors for FID/KID
    runner.py    one run: spec -> train -> FID/KID -> run directory + DuckDB row
"""
