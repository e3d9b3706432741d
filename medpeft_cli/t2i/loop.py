"""The text-to-image training loop (Accelerate): the denoising objective of Stable Diffusion on the U-Net.

Per step, as diffusers' examples/text_to_image/train_text_to_image.py: sample a latent from the VAE
posterior, scale it, add noise at a uniformly drawn timestep, and regress the U-Net's prediction on
the scheduler's target (the noise for epsilon-prediction, the velocity for v-prediction) with MSE.
AdamW, linear warm-up then cosine decay (the classification protocol's schedule), optional EMA of the
trained parameters (diffusers' EMAModel) that is then evaluated, optional caption dropout. Epochs,
checkpoints, resume, stop signals and divergence are the shared `EpochLoop`'s (train/loop.py).

Batches come either from the latent cache (posterior parameters + caption embeddings) or, uncached,
as images + token ids encoded on the fly by the frozen VAE and text encoder; both feed the same
step, drawing the same random numbers in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medpeft_cli.config import T2IOptions, TrainOptions
from medpeft_cli.errors import UserError
from medpeft_cli.train.loop import EpochLoop, make_scheduler, peak_memory
from medpeft_cli.train.resume import Control

VAL_SEED = 20240704  # fixed noise and timesteps of the validation loss: comparable across epochs and runs


class Rows(Dataset):
    """Aligned arrays (memory maps welcome) served in whole batches: (array_0[rows], ..., array_k[rows], rows)
    as tensors, where sample i is row index[i] (index None: row i)."""

    def __init__(self, arrays: list[np.ndarray], convert: Callable[[np.ndarray], torch.Tensor] = torch.from_numpy, index: np.ndarray | None = None):
        self.arrays, self.convert = arrays, convert
        self.index = np.arange(len(arrays[0])) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]):
        rows = np.sort(self.index[np.asarray(indices)])  # sorted rows read a memory map sequentially
        return (*(self.convert(np.ascontiguousarray(a[rows])) for a in self.arrays), torch.as_tensor(rows))


def _whole_batch(batch):
    return batch


def rows_loader(arrays: list[np.ndarray], batch_size: int, shuffle: bool, seed: int, convert=torch.from_numpy, index=None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(Rows(arrays, convert, index), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_whole_batch)


@dataclass
class Denoising:
    """What turns a batch into the loss: the noise schedule, latent scaling and the prediction target."""

    noise_scheduler: object  # diffusers DDPMScheduler
    scaling_factor: float
    shift_factor: float
    prediction_type: str
    empty_text: torch.Tensor  # (1, L, D): the empty caption, for caption dropout
    caption_dropout: float = 0.0

    def latents(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        z = DiagonalGaussianDistribution(params.float()).sample(generator=generator)
        return (z - self.shift_factor) * self.scaling_factor

    def loss(self, unet: nn.Module, params: torch.Tensor, text: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction MSE of one batch; random draws from `generator` (None: the global RNG)."""
        latents = self.latents(params, generator)
        bsz, device = latents.shape[0], latents.device
        draw_on = generator.device if generator is not None else device  # a fixed generator draws on its own device
        text = text.float()
        if self.caption_dropout > 0:
            drop = torch.rand(bsz, generator=generator, device=draw_on).to(device) < self.caption_dropout
            text = torch.where(drop[:, None, None], self.empty_text.to(device, text.dtype).expand_as(text), text)
        noise = torch.randn(latents.shape, generator=generator, device=draw_on).to(device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (bsz,), generator=generator, device=draw_on).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:  # "sample"
            target = latents
        pred = unet(noisy, timesteps, text, return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float())


@dataclass
class T2IFitResult:
    history: list[dict] = field(default_factory=list)
    train_loss: float = float("nan")  # last epoch's mean training loss
    val_loss: float | None = None  # after the last epoch (with EMA weights when EMA is on)
    steps: int = 0
    train_images_per_s: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""
    diverged: str = ""  # why training stopped early (the loss became NaN/Inf); "" when it did not


@torch.no_grad()
def validation_loss(unet: nn.Module, loader, denoising: Denoising, accelerator: Accelerator) -> float:
    """Mean loss over the validation set with fixed noise and timesteps (same draws every epoch)."""
    unet.eval()
    generator = torch.Generator("cpu").manual_seed(VAL_SEED + accelerator.process_index)
    total = torch.zeros(2, device=accelerator.device)
    for params, text, _ in loader:  # always (latent posterior parameters, caption embeddings)
        loss = denoising.loss(unet, params, text, generator)
        total += torch.stack([loss.detach().float() * len(params), torch.tensor(float(len(params)), device=accelerator.device)])
    total = accelerator.reduce(total, "sum")
    return float(total[0] / total[1])


@dataclass
class DenoisingStep:
    """One training step: encode the batch (cached: as it is), noise-prediction loss, backward, AdamW
    (Accelerate's optimizer wrapper skips the step while gradients accumulate), schedule, EMA update.
    Also the checkpointed state of the loop's task (`state`/`load`): optimizer steps and the EMA."""

    unet: nn.Module
    optimizer: Any
    scheduler: Any
    accelerator: Accelerator
    encode: Callable
    denoising: Denoising
    params: list[nn.Parameter]  # the trained parameters (what the EMA averages)
    ema: Any = None  # diffusers EMAModel, or None
    steps: int = 0  # optimizer steps taken

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.accelerator.device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.accelerator.device)

    def __call__(self, batch) -> int:
        accelerator = self.accelerator
        with accelerator.accumulate(self.unet):
            batch_params, text = self.encode(batch)
            loss = self.denoising.loss(self.unet, batch_params, text)
            accelerator.backward(loss)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            self.steps += 1
            if self.ema is not None:
                self.ema.step(self.params)
        loss = loss.detach()
        self.loss_sum += loss * len(batch_params)
        self.nonfinite |= ~torch.isfinite(loss)
        return len(batch_params)

    def state(self) -> dict[str, Any]:
        if self.ema is None:
            return {"t2i_steps": self.steps, "ema": None}
        ema = self.ema.state_dict()
        return {"t2i_steps": self.steps, "ema": {**ema, "shadow_params": [p.detach().cpu().clone() for p in ema["shadow_params"]]}}

    def load(self, checkpoint: dict[str, Any]) -> None:
        self.steps = checkpoint["t2i_steps"]
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
            self.ema.to(self.accelerator.device)


@dataclass
class EndOfEpochValidation:
    """The validation loss after an epoch (with EMA: only after the last one, with the averaged weights,
    which are then what is evaluated and saved)."""

    unet: nn.Module
    loader: Any
    denoising: Denoising
    accelerator: Accelerator
    epochs: int
    step: DenoisingStep

    def __call__(self, epoch: int, record: dict) -> None:
        if len(self.loader) and (epoch == self.epochs or self.step.ema is None):
            if self.step.ema is not None:
                self.step.ema.copy_to(self.step.params)
            record["val_loss"] = validation_loss(self.unet, self.loader, self.denoising, self.accelerator)


def fit_t2i(
    unet: nn.Module,
    train_loader,
    val_loader,
    encode: Callable,
    denoising: Denoising,
    options: TrainOptions,
    t2i: T2IOptions,
    lr: float,
    accelerator: Accelerator,
    on_epoch: Callable[[dict], None] = lambda record: None,
    on_step: Callable[[int], None] = lambda n: None,
    control: Control | None = None,
) -> T2IFitResult:
    """Train `unet`'s trainable parameters; returns the history. With EMA, the averaged weights are
    copied into the U-Net at the end (they are what is evaluated and saved). `control` (checkpoint,
    resume, stop flag, hooks) replaces `on_epoch`/`on_step` when given."""
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise UserError("the method left no U-Net parameter trainable; check its options")
    data_generator = train_loader.sampler.generator  # its state at an epoch's start fixes that epoch's batches
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)
    unet, optimizer, train_loader, val_loader = accelerator.prepare(unet, optimizer, train_loader, val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / options.grad_accum_steps)
    scheduler = make_scheduler(optimizer, steps_per_epoch * options.epochs, round(options.warmup_epochs * steps_per_epoch))
    ema = None
    if t2i.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=t2i.ema_decay)
        ema.to(accelerator.device)
    step = DenoisingStep(unet, optimizer, scheduler, accelerator, encode, denoising, params, ema)
    loop = EpochLoop(
        accelerator=accelerator, model=unet, optimizer=optimizer, scheduler=scheduler, loader=train_loader,
        data_generator=data_generator, epochs=options.epochs, step=step, extra=step,
        control=control or Control(on_step=on_step, on_epoch=on_epoch),
        evaluate=EndOfEpochValidation(unet, val_loader, denoising, accelerator, options.epochs, step),
    )  # fmt: skip
    diverged = loop.run()
    if ema is not None and not len(val_loader) and not diverged:
        ema.copy_to(params)
    peak, kind = peak_memory(accelerator)
    last = loop.history[-1] if loop.history and not diverged else {}
    return T2IFitResult(
        history=loop.history, train_loss=last.get("train_loss", float("nan")), val_loss=last.get("val_loss"), steps=step.steps,
        train_images_per_s=loop.images_per_s, peak_memory_mb=peak, memory_kind=kind, diverged=diverged,
    )  # fmt: skip
