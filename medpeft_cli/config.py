"""Run configuration: pydantic models, YAML + `--set` overrides, and the run key.

A `RunSpec` says everything that determines a run's result. `run_key()` hashes its normalised form
(method options and learning rate filled with their defaults) together with PROTOCOL_VERSION, so the
same experiment gets the same key on every machine, and a change of the training protocol gets new keys.
This module must stay free of torch imports: the CLI builds specs before deciding to train.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medpeft_cli import yamlfile
from medpeft_cli.errors import UserError
from medpeft_cli.numbers import NoBoolNumbers

# Bump when a change of the training or evaluation code could change a result for the same spec.
PROTOCOL_VERSION = 1

# A parameter budget: a percentage of the backbone ("0.5%") or a count ("150000", "150k", "1.2M").
BUDGET_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|k|m)?\s*$", re.IGNORECASE)


class _Strict(NoBoolNumbers):  # unknown keys and booleans given for numbers are errors
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodSpec(BaseModel):
    """The PEFT method and its options; options are validated by the method's own options model."""

    model_config = ConfigDict(extra="allow")

    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainOptions(_Strict):
    # 30 epochs at batch 32: about 500 optimizer steps on BreastMNIST's 546 training images, enough for the default
    # run to converge (5 x 64 = 45 steps stayed at the majority class); runs on bigger sets give their own.
    epochs: int = Field(30, ge=1, le=10_000, description="training epochs (or give steps)")
    batch_size: int = Field(32, ge=1, description="training images per optimizer step (per device)")
    lr: float | None = Field(None, gt=0, description="None = the method's default learning rate")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_batch_size: int = Field(256, ge=1)
    # Class imbalance: "loss" weights cross-entropy by n / (k * n_class) over the training subset;
    # "sampler" draws training batches with replacement so every class is equally likely.
    class_weighting: Literal["none", "loss", "sampler"] = "none"
    compile: bool = Field(False, description="torch.compile the model (speed only, results equal within float rounding; not part of the run key)")
    # Length, evaluation, selection and augmentation (classification; docs/protocol.md). The defaults are
    # protocol 1: `epochs` epochs, validation after every epoch, the evaluation with the best val macro-F1.
    steps: int | None = Field(
        None, ge=1, le=10_000_000, description="run length in optimizer steps instead of epochs (epochs = ceil(steps / steps per epoch), the last one cut)"
    )
    eval_every_steps: int | None = Field(None, ge=1, description="evaluate on validation every N optimizer steps and at the last (default: after every epoch)")
    evals_per_run: int | None = Field(None, ge=1, description="K validation evaluations spread evenly over the run's optimizer steps, the last at its end")
    select_on: Literal["val_macro_f1", "val_loss", "last"] = Field(
        "val_macro_f1", description="which evaluation's weights are scored on test: best val macro-F1, lowest val loss, or the last (no selection)"
    )
    augment: Literal["none", "flip", "crop-flip"] = Field(
        "none", description="training-time augmentation on the device: horizontal flip, or a 4-pixel padded random crop + flip (never at evaluation)"
    )

    @model_validator(mode="after")
    def _one_length_and_schedule(self) -> TrainOptions:
        default_epochs = type(self).model_fields["epochs"].default
        if self.steps is not None and self.epochs != default_epochs:
            raise ValueError(f"give the run's length either as epochs ({self.epochs}) or as steps ({self.steps}), not both")
        if self.eval_every_steps is not None and self.evals_per_run is not None:
            raise ValueError("give either eval_every_steps or evals_per_run, not both")
        return self

    def protocol_options(self) -> dict[str, Any]:
        """The options set away from protocol 1's length/evaluation/selection/augmentation (classification only)."""
        fields = type(self).model_fields
        return {n: getattr(self, n) for n in CLASSIFICATION_ONLY if getattr(self, n) != fields[n].default}


# TrainOptions the classification loop implements and the text-to-image loop does not.
CLASSIFICATION_ONLY = ("steps", "eval_every_steps", "evals_per_run", "select_on", "augment")


class OutputOptions(_Strict):
    """Where results go. Not part of the run key."""

    runs_dir: Path = Path("runs")
    db: Path = Path("results/medpeft.duckdb")
    data_dir: Path | None = None


class T2IOptions(_Strict):
    """Text-to-image runs (`task: t2i`). None = the default for the pipeline (medpeft_cli/t2i/options.py):
    the study's protocol for real pipelines, a quick smoke profile for the embedded tiny-sd."""

    caption_column: str = Field("caption", min_length=1, description="dataset metadata column holding each image's caption")
    caption_dropout: float = Field(0.0, ge=0, le=1, description="probability of training on the empty caption (for classifier-free guidance)")
    num_inference_steps: int | None = Field(None, ge=1, le=1000, description="sampling steps (None: 50; tiny-sd 20)")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance scale when sampling (<= 1: no guidance)")
    fid_samples: int | None = Field(None, ge=2, description="images generated per seed from held-out prompts (None: 1000; tiny-sd 100)")
    fid_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1, description="generation seeds; FID/KID are reported as mean and std over them")
    fid_features: str | None = Field(None, description="feature extractor: inception | dinov2 | <timm name>[@random|@FILE] (None: inception; tiny-sd test_vit@random)")
    ema: bool = Field(False, description="keep an exponential moving average of the trained parameters and evaluate it")
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    # Speed only: these never change what is computed, so they are not part of the run key.
    cache_latents: bool = Field(True, description="encode images and captions once per dataset/resolution and cache them on disk")
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"

    @field_validator("fid_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) >= 4000:
            raise ValueError(f"seeds must be distinct integers in 0..3999, got {seeds}")
        return seeds


# T2IOptions fields that only change speed, left out of the run key.
T2I_SPEED_ONLY = ("cache_latents", "gradient_checkpointing", "attention")
# What a spec that names nothing means. Classification: the packaged pretrained CIFAR ResNet-20 tuned on
# the packaged real BreastMNIST (28 px, upsampled to 32, the resolution it was pretrained at) with BN
# tuning, one of the study's CNN methods: a real transfer result, offline, in about a minute on 2 cores
# (README "The default run"). Text-to-image: the embedded captioned data and tiny pipeline.
DEFAULT_METHOD = {"classification": "bn", "t2i": "lora"}
T2I_DEFAULTS = {"dataset": "synthetic-captions", "backbone": "tiny-sd", "weights": "pipeline", "image_size": 32}


class RunSpec(_Strict):
    """One run: dataset x backbone x method x data fraction x seed (+ training options)."""

    task: Literal["classification", "t2i"] = Field(
        "classification", description="classification (timm backbone) or t2i (Stable Diffusion U-Net, FID/KID)"
    )
    dataset: str = "breastmnist"
    backbone: str = "cifar_resnet20"
    weights: str = Field(
        "pretrained",
        description="'random' (random init), 'pretrained' (the backbone's own weights: a builtin's packaged file, timm/HF hub) or the path of a weights file (any extension)",
    )
    weights_prefix: str | None = Field(
        None, min_length=1, description="load only the weights file's keys under this prefix, without it (e.g. 'backbone.'); default: strip a module./model./backbone./encoder. prefix every key has"
    )
    weights_key: str | None = Field(
        None, min_length=1, description="dotted key path of the state dict in the weights file (e.g. 'model_ema'); default: the usual keys (state_dict, model, ...)"
    )
    head: str | None = Field(
        None, min_length=1, description="name of the classifier Linear to replace (default: the Linear whose output is the model's output)"
    )
    image_size: int = Field(32, ge=8, le=4096)
    method: MethodSpec = Field(default_factory=lambda: MethodSpec(name=DEFAULT_METHOD["classification"]))
    data_fraction: float = Field(1.0, gt=0, le=1)
    shots: int | None = Field(None, ge=1, description="k images per class from the training split instead of a fraction")
    data_resolution: int | None = Field(None, ge=8, le=4096, description="resolution of the dataset files to load (None: the registry default)")
    seed: int = Field(0, ge=0)
    param_budget: str | None = Field(
        None, description="trainable parameters of the method (head excluded): '0.5%' of the backbone or a count (150000, 150k, 1.2M); picks the method's size knob"
    )
    train: TrainOptions = Field(default_factory=TrainOptions)
    t2i: T2IOptions | None = Field(None, description="text-to-image options (task t2i only; filled with defaults there)")
    output: OutputOptions = Field(default_factory=OutputOptions)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        # A t2i spec defaults to the embedded captioned data and tiny pipeline, not to the classifier's.
        if isinstance(data, dict) and data.get("task") == "t2i":
            data = {**T2I_DEFAULTS, **data}
            data.setdefault("t2i", {})
        return data

    @model_validator(mode="after")
    def _task_rules(self) -> RunSpec:
        if self.task == "classification" and self.t2i is not None:
            raise ValueError("t2i options apply to text-to-image runs only; add --task t2i (task: t2i)")
        if self.task == "t2i":
            if self.weights != "pipeline":
                raise ValueError("a t2i run uses its pipeline's own weights: name the pipeline with --backbone (HF id, local folder or tiny-sd) and drop --weights")
            if self.shots is not None or self.train.class_weighting != "none" or self.param_budget is not None:
                raise ValueError("shots, class_weighting and param_budget apply to classification runs only; use data_fraction for t2i")
            if self.train.compile:
                raise ValueError("train.compile applies to classification runs only; drop --compile for t2i")
            if self.train.protocol_options():
                names = [f"train.{n}" for n in self.train.protocol_options()]
                verb = "applies" if len(names) == 1 else "apply"
                raise ValueError(f"{', '.join(names)} {verb} to classification runs only (t2i trains whole epochs and evaluates after each); drop it for t2i")
        return self

    @field_validator("param_budget", mode="before")
    @classmethod
    def _budget_text(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and not BUDGET_PATTERN.match(value):
            raise ValueError("write a percentage of the backbone (0.5%) or a parameter count (150000, 150k, 1.2M)")
        return value.strip() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _method_shorthand(cls, data: Any) -> Any:
        # `method: lora` is shorthand for `method: {name: lora}`; a method without a name is the task's default.
        if not isinstance(data, dict):
            return data
        method = data.get("method")
        if isinstance(method, str):
            return {**data, "method": {"name": method}}
        default = DEFAULT_METHOD.get(data.get("task", "classification"))
        if method is None and default:
            return {**data, "method": {"name": default}}
        if isinstance(method, dict) and "name" not in method and default:
            return {**data, "method": {"name": default, **method}}
        return data

    @model_validator(mode="after")
    def _prefix_needs_a_file(self) -> RunSpec:
        for name in ("weights_prefix", "weights_key"):
            if getattr(self, name) is not None and self.weights in ("random", "pretrained", "pipeline"):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} applies to a local weights file, not to weights {self.weights!r}; pass --weights FILE or drop {flag}")
        if self.head is not None and self.task == "t2i":
            raise ValueError("head applies to classification runs only; drop --head")
        return self

    @model_validator(mode="after")
    def _one_subset_rule(self) -> RunSpec:
        if self.shots is not None and self.data_fraction != 1.0:
            raise ValueError(f"give either shots ({self.shots}) or data_fraction ({self.data_fraction}), not both")
        return self

    def speed_fields(self) -> dict[str, Any]:
        """The options left out of the run key because they change only speed (e.g. lora impl, compile):
        recorded on the result row, so a row says which implementation computed it."""
        data = self.model_dump(mode="json", exclude={"output"})
        out = {f"method.{n}": self.method.options[n] for n in method_speed_only(self.task, self.method.name) if n in self.method.options}
        out.update({f"train.{n}": data["train"][n] for n in TRAIN_SPEED_ONLY})
        if data.get("t2i"):
            out.update({f"t2i.{n}": data["t2i"][n] for n in T2I_SPEED_ONLY if n in data["t2i"]})
        return out

    def key_fields(self) -> dict[str, Any]:
        """The fields that determine the result (everything except output locations). A weights file enters
        by its content hash, not its path, and a custom factory by its source file's hash."""
        data = self.model_dump(mode="json", exclude={"output"})
        data["method"] = {"name": self.method.name, **self.method.options}
        # Fields added after protocol 1 enter the key only when set, so earlier run keys stay valid.
        for path, default in _KEY_IF_SET.items():
            node = data
            for part in path[:-1]:
                node = node[part]
            if node.get(path[-1]) == default:
                node.pop(path[-1], None)
        for name in T2I_SPEED_ONLY if data.get("t2i") else ():
            data["t2i"].pop(name, None)
        for name in method_speed_only(self.task, self.method.name):
            data["method"].pop(name, None)
        for name in TRAIN_SPEED_ONLY:
            data["train"].pop(name, None)
        if self.task == "classification":  # what was loaded, not where from: a changed file is a new experiment
            from medpeft_cli.models.sources import code_identity, weights_identity

            code = code_identity(self.backbone)
            if code is not None:
                data["backbone_code"] = code
            content = weights_identity(self.weights)  # a weights file: its content hash replaces its path
            if content is not None:
                data["weights"] = f"file {content}"
        return data


def method_speed_only(task: str, method: str) -> tuple[str, ...]:
    """Method options that only change how the same function is computed (equal within float rounding): never
    in the run key, so choosing a faster implementation does not make a finished run look new. Each method
    declares them (`register_method(speed_only=...)`, e.g. lora's `impl`); reading them needs no torch."""
    from medpeft_cli.methods.catalog import speed_only_options

    return speed_only_options(method, task)


TRAIN_SPEED_ONLY = ("compile",)

# field path -> default value at which it is left out of the run key
_KEY_IF_SET: dict[tuple[str, ...], Any] = {
    ("weights_prefix",): None, ("weights_key",): None, ("head",): None, ("t2i",): None, ("param_budget",): None,
    ("shots",): None, ("data_resolution",): None, ("train", "class_weighting"): "none",
    # issue 15: run length in steps, the evaluation schedule, the selection rule, augmentation
    ("train", "steps"): None, ("train", "eval_every_steps"): None, ("train", "evals_per_run"): None,
    ("train", "select_on"): "val_macro_f1", ("train", "augment"): "none",
}  # fmt: skip


def run_key(spec: RunSpec) -> str:
    """Stable 16-hex-digit key of a normalised spec and the protocol version."""
    payload = json.dumps({"protocol_version": PROTOCOL_VERSION, **spec.key_fields()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError, prefix: str = "invalid config") -> str:
    """One line: every problem as `field.path: message (got value)`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; `medpeft train --help` lists the options)"
        got = err.get("input")
        shown = "" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"{prefix}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value parsed as YAML so numbers, bools and lists get their types)."""
    if "=" not in text:
        raise UserError(f"--set {text!r} is not KEY=VALUE; write e.g. --set method.rank=4")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"--set {text!r} has an empty key; write e.g. --set train.lr=0.001")
    try:
        value = yamlfile.load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set data[path[0]][path[1]]... = value, creating the nested dicts on the way."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part == "method":
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[path[-1]] = value


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yamlfile.load(text)  # a duplicated key is an error here, not the last value silently
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}; fix the file and retry") from None
    if data is None:
        raise UserError(f"config file {path} is empty (or only comments); write options such as `method: lora`, or drop the file")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a YAML mapping of options (e.g. `method: lora`), not a {type(data).__name__}")
    return data


def build_spec(config: Path | None = None, flags: dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunSpec:
    """Defaults < YAML config < command-line flags (dotted keys) < `--set` overrides."""
    data: dict[str, Any] = load_yaml(config) if config else {}
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        path = dotted.split(".")
        if path == ["method"]:
            current = data.get("method")
            current_name = current.get("name") if isinstance(current, dict) else current
            # A different method on the command line drops the config's options of the old method.
            if current_name != value:
                data["method"] = {"name": value}
            continue
        set_path(data, path, value)
    for text in overrides or []:
        path, value = parse_override(text)
        set_path(data, path, value)
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc)) from None
