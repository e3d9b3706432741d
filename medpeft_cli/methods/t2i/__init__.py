"""Text-to-image methods: which parameters of the Stable Diffusion U-Net train (task "t2i"); every module
here is imported by methods/catalog.py. Modules import torch and diffusers only inside their functions."""
