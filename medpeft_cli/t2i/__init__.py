"""The text-to-image track: parameter-efficient fine-tuning of the Stable Diffusion U-Net.

    pipeline.py  a diffusers SD pipeline (HF id, local folder or the embedded `tiny-sd`), offline
    captions.py  image-caption data: the caption column of a dataset, the synthetic captioned set
    latents.py   VAE latents and text embeddings computed once per dataset/resolution, cached on disk
    (methods)    which U-Net parameters train: medpeft_cli/methods/t2i/ (registered with task="t2i")
    loop.py      noise-prediction training (Accelerate), optional EMA
    generate.py  sampling from held-out prompts with fixed seeds, sample grid
    features.py  pluggable feature extractors for FID/KID
    scoring.py   generation from the test prompts -> FID/KID over seeds, the run's sample files
    task.py      the t2i task of the run orchestrator (medpeft_cli/run/): prepare, fit, evaluate, row, files
"""
