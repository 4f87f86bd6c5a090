"""The training setup as frozen dataclasses.

One field, one meaning, one docstring. Validation happens in ``__post_init__``
and raises :class:`planner.errors.PlannerError` naming the field, so the CLI can
print it as a one-line error with exit code 2.

The built-in default mirrors MONAI's 3D AutoencoderKL tutorial
(Project-MONAI/tutorials, ``generation/3d_autoencoderkl/3d_autoencoderkl_tutorial.ipynb``):
``AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, channels=(32, 64, 64),
latent_channels=3, num_res_blocks=1, norm_num_groups=16,
attention_levels=(False, False, True))``, ``PatchDiscriminator(spatial_dims=3,
num_layers_d=3, channels=32, in_channels=1, out_channels=1)``,
``PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True,
fake_3d_ratio=0.2)``, Adam(lr=1e-4) for both networks, batch size 1 and
``CenterSpatialCropd(roi_size=(96, 96, 64))``, AMP with a GradScaler per optimizer;
loss weights adv 0.01, perceptual 0.001, KL 1e-6.

This module is torch-free: the analytic estimator imports it.
"""

from __future__ import annotations

from dataclasses import field, fields, replace
from typing import Any

from planner.records import dataclass
from planner.errors import PlannerError, quote

KINDS = ("ldm-stage1", "ldm-stage2")
OPTIMIZERS = ("adam", "adamw", "sgd")
NETWORK_TYPES = ("squeeze", "alex", "vgg")
DISC_NORMS = ("batch", "instance")
DIFFUSION_INPUTS = ("latent", "image")
AMP_DTYPES = ("float16", "bfloat16")


# -- bounds: what the networks can be ---------------------------------------------
# Every integer field has an upper bound, so no input can make the estimator loop a
# billion times, overflow a float or build shapes no GPU will ever hold.
MAX_SIDE = 4096
"""Voxels per axis: one 4096**3 fp32 volume is 256 GiB, twice the largest card."""
MAX_CHANNELS = 65536
"""Channels of any layer (image, latent, level, discriminator, attention head)."""
MAX_LEVELS = 13
"""Entries of num_channels: 12 downsamplings by 2 take MAX_SIDE to 1."""
MAX_RES_BLOCKS = 64
"""Residual blocks per level: MONAI's configs use 1-3."""
MAX_TOTAL_RES_BLOCKS = 128
"""Residual blocks over all levels: MONAI's networks have 2-12; the estimate's time grows
with the block count (128 blocks with attention everywhere take a few seconds)."""
MAX_DISC_LAYERS = 12
"""PatchDiscriminator layers: each halves the volume, and 2**12 = MAX_SIDE."""
MAX_BATCH = 2**20
"""Volumes per micro-batch (or micro-batches per optimizer step)."""


def _err(path: str, msg: str) -> PlannerError:
    return PlannerError(f"{path}: {msg}")


def _check_int(path: str, value: Any, lo: int, hi: int, why: str) -> None:
    """An int (not a bool) in [lo, hi]; ``why`` says where the upper bound comes from."""
    what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _err(path, f"must be {what}, got {quote(value)} (valid: {lo}..{hi:,})")
    if value > hi:
        raise _err(path, f"must be at most {hi:,}, got {quote(value)} (valid: {lo}..{hi:,}; {why})")


def _check_pos_int(path: str, value: Any, hi: int = MAX_CHANNELS, why: str = "") -> None:
    _check_int(path, value, 1, hi, why or "no layer has more channels")


def _check_list(path: str, value: Any, max_len: int = MAX_LEVELS) -> None:
    if not isinstance(value, tuple):
        raise _err(path, f"needs a list, got {quote(value)}")
    if len(value) > max_len:
        raise _err(path, f"has {len(value):,} entries (valid: at most {max_len}, one per level)")


def _check_total_blocks(path: str, blocks: tuple[int, ...]) -> None:
    if sum(blocks) > MAX_TOTAL_RES_BLOCKS:
        raise _err(path, f"{sum(blocks):,} residual blocks in total (valid: at most {MAX_TOTAL_RES_BLOCKS} over all "
                         f"levels; MONAI's networks have 2-12)")


def _check_bool(path: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _err(path, f"must be true or false, got {quote(value)}")


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _err(path, f"got {quote(value)}, valid: {', '.join(choices)}")


@dataclass(frozen=True)
class DataSpec:
    """The training volumes."""

    voxel_size: tuple[int, ...] = (96, 96, 64)
    """Spatial size of one training volume (H, W, D); 2 or 3 entries (2D or 3D)."""
    in_channels: int = 1
    """Image channels (1 for a single MRI contrast)."""

    def __post_init__(self) -> None:
        if not isinstance(self.voxel_size, tuple) or len(self.voxel_size) not in (2, 3):
            raise _err("data.voxel_size", f"needs 2 or 3 sizes like [256, 256, 64], got {quote(self.voxel_size)}")
        for s in self.voxel_size:
            _check_pos_int("data.voxel_size", s, MAX_SIDE, "one 4096**3 fp32 volume is 256 GiB")
        _check_pos_int("data.in_channels", self.in_channels)

    @property
    def spatial_dims(self) -> int:
        return len(self.voxel_size)


@dataclass(frozen=True)
class PerceptualSpec:
    """MONAI's 2.5D PerceptualLoss (LPIPS backbone, frozen weights)."""

    network_type: str = "squeeze"
    """LPIPS backbone: squeeze, alex or vgg."""
    fake_3d_ratio: float = 0.2
    """Fraction of the B*S slices per axis that go through the 2D network."""

    def __post_init__(self) -> None:
        _check_choice("autoencoder.training.perceptual.network_type", self.network_type, NETWORK_TYPES)
        r = self.fake_3d_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise _err("autoencoder.training.perceptual.fake_3d_ratio", f"must be in (0, 1], got {quote(r)}")


@dataclass(frozen=True)
class DiscriminatorSpec:
    """MONAI PatchDiscriminator for the adversarial loss."""

    enabled: bool = True
    """Train the discriminator (the reference step after the adversarial warm-up)."""
    num_layers_d: int = 3
    """Number of strided conv layers (each halves the volume but the last)."""
    num_channels: int = 32
    """Filters in the first layer, doubled per layer."""
    norm: str = "batch"
    """Feature normalisation: batch or instance."""

    def __post_init__(self) -> None:
        p = "autoencoder.training.discriminator"
        _check_bool(f"{p}.enabled", self.enabled)
        _check_pos_int(f"{p}.num_layers_d", self.num_layers_d, MAX_DISC_LAYERS,
                       f"each layer halves the volume and sides are at most {MAX_SIDE}")
        _check_pos_int(f"{p}.num_channels", self.num_channels)
        _check_choice(f"{p}.norm", self.norm, DISC_NORMS)


@dataclass(frozen=True)
class AutoencoderTraining:
    """How stage 1 is trained."""

    batch_size: int = 1
    """Volumes per micro-batch (what is on the GPU at once)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches whose gradients are summed before each optimizer step."""
    use_gradient_checkpointing: bool = False
    """MONAI's use_checkpoint: encoder and decoder each one checkpointed segment."""
    use_perceptual_loss: bool = True
    """Add the 2.5D LPIPS perceptual loss to the generator loss."""
    perceptual: PerceptualSpec = field(default_factory=PerceptualSpec)
    """The perceptual network."""
    discriminator: DiscriminatorSpec = field(default_factory=DiscriminatorSpec)
    """The adversarial discriminator."""
    optimizer: str = "adam"
    """adam, adamw or sgd (momentum 0.9), the same for generator and discriminator."""

    def __post_init__(self) -> None:
        p = "autoencoder.training"
        _check_pos_int(f"{p}.batch_size", self.batch_size, MAX_BATCH, "a million volumes per micro-batch")
        _check_pos_int(f"{p}.gradient_accumulation_steps", self.gradient_accumulation_steps, MAX_BATCH,
                       "a million micro-batches per step")
        _check_bool(f"{p}.use_gradient_checkpointing", self.use_gradient_checkpointing)
        _check_bool(f"{p}.use_perceptual_loss", self.use_perceptual_loss)
        _check_choice(f"{p}.optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class AutoencoderSpec:
    """MONAI AutoencoderKL (stage 1 of latent diffusion)."""

    num_channels: tuple[int, ...] = (32, 64, 64)
    """Output channels per level; len(num_channels) - 1 downsamplings."""
    latent_channels: int = 3
    """Channels of the latent z."""
    num_res_blocks: tuple[int, ...] = (1, 1, 1)
    """Residual blocks per level (an int in YAML applies to every level)."""
    norm_num_groups: int = 16
    """GroupNorm groups; every entry of num_channels must be divisible by it."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Which levels get a spatial self-attention block after each res block."""
    with_encoder_nonlocal_attn: bool = True
    """Res + attention + res block at the encoder's bottom."""
    with_decoder_nonlocal_attn: bool = True
    """Res + attention + res block at the decoder's top."""
    use_flash_attention: bool = False
    """Use torch's scaled_dot_product_attention (O(n) memory) instead of explicit scores."""
    training: AutoencoderTraining = field(default_factory=AutoencoderTraining)
    """Stage-1 training settings."""

    def __post_init__(self) -> None:
        p = "autoencoder"
        if not isinstance(self.num_channels, tuple) or not self.num_channels:
            raise _err(f"{p}.num_channels", f"needs a list like [32, 64, 64], got {quote(self.num_channels)}")
        _check_list(f"{p}.num_channels", self.num_channels)
        for c in self.num_channels:
            _check_pos_int(f"{p}.num_channels", c)
        _check_pos_int(f"{p}.latent_channels", self.latent_channels)
        _check_pos_int(f"{p}.norm_num_groups", self.norm_num_groups)
        bad = [c for c in self.num_channels if c % self.norm_num_groups]
        if bad:
            raise _err(
                f"{p}.num_channels",
                f"{list(self.num_channels)} has {bad} not divisible by norm_num_groups={self.norm_num_groups}",
            )
        n = len(self.num_channels)
        _check_list(f"{p}.attention_levels", self.attention_levels)
        if len(self.attention_levels) != n:
            raise _err(f"{p}.attention_levels", f"needs {n} entries (one per num_channels level), got {quote(list(self.attention_levels))}")
        for a in self.attention_levels:
            _check_bool(f"{p}.attention_levels", a)
        _check_list(f"{p}.num_res_blocks", self.num_res_blocks)
        if len(self.num_res_blocks) != n:
            raise _err(f"{p}.num_res_blocks", f"needs an int or {n} entries, got {quote(list(self.num_res_blocks))}")
        for r in self.num_res_blocks:
            _check_int(f"{p}.num_res_blocks", r, 0, MAX_RES_BLOCKS, "MONAI's configs use 1-3 per level")
        _check_total_blocks(f"{p}.num_res_blocks", self.num_res_blocks)
        _check_bool(f"{p}.with_encoder_nonlocal_attn", self.with_encoder_nonlocal_attn)
        _check_bool(f"{p}.with_decoder_nonlocal_attn", self.with_decoder_nonlocal_attn)
        _check_bool(f"{p}.use_flash_attention", self.use_flash_attention)

    @property
    def downsample_factor(self) -> int:
        """AutoencoderKL downsamples once per level but the last: 2**(levels-1)."""
        return 2 ** (len(self.num_channels) - 1)


@dataclass(frozen=True)
class DiffusionTraining:
    """How stage 2 is trained."""

    batch_size: int = 16
    """Samples per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    optimizer: str = "adam"
    """adam, adamw or sgd (momentum 0.9)."""

    def __post_init__(self) -> None:
        _check_pos_int("diffusion.training.batch_size", self.batch_size, MAX_BATCH, "a million samples per micro-batch")
        _check_pos_int("diffusion.training.gradient_accumulation_steps", self.gradient_accumulation_steps, MAX_BATCH,
                       "a million micro-batches per step")
        _check_choice("diffusion.training.optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class DiffusionSpec:
    """MONAI DiffusionModelUNet (stage 2), noise-prediction MSE step."""

    num_channels: tuple[int, ...] = (64, 64, 128)
    """Output channels per level."""
    attention_levels: tuple[bool, ...] = (False, False, True)
    """Levels with spatial transformer blocks."""
    num_head_channels: tuple[int, ...] = (0, 0, 128)
    """Channels per attention head per level (0 where there is no attention)."""
    num_res_blocks: tuple[int, ...] = (2, 2, 2)
    """Residual blocks per level (an int in YAML applies to every level)."""
    norm_num_groups: int = 32
    """GroupNorm groups (MONAI's default 32)."""
    use_flash_attention: bool = False
    """Use torch's scaled_dot_product_attention."""
    input: str = "latent"
    """What the UNet denoises: 'latent' (the stage-1 latent: latent_channels at voxel/2**(levels-1)) or 'image'."""
    training: DiffusionTraining = field(default_factory=DiffusionTraining)
    """Stage-2 training settings."""

    def __post_init__(self) -> None:
        p = "diffusion"
        _check_list(f"{p}.num_channels", self.num_channels)
        n = len(self.num_channels)
        if not n:
            raise _err(f"{p}.num_channels", "needs at least one level")
        for c in self.num_channels:
            _check_pos_int(f"{p}.num_channels", c)
        _check_pos_int(f"{p}.norm_num_groups", self.norm_num_groups)
        bad = [c for c in self.num_channels if c % self.norm_num_groups]
        if bad:
            raise _err(
                f"{p}.num_channels",
                f"{list(self.num_channels)} has {bad} not divisible by norm_num_groups={self.norm_num_groups}",
            )
        for name in ("attention_levels", "num_head_channels", "num_res_blocks"):
            v = getattr(self, name)
            _check_list(f"{p}.{name}", v)
            if len(v) != n:
                raise _err(f"{p}.{name}", f"needs {n} entries (one per num_channels level), got {quote(list(v))}")
        for h in self.num_head_channels:
            _check_int(f"{p}.num_head_channels", h, 0, MAX_CHANNELS, "no layer has more channels")
        for lvl, (c, att, h) in enumerate(zip(self.num_channels, self.attention_levels, self.num_head_channels)):
            _check_bool(f"{p}.attention_levels", att)
            if att and (not isinstance(h, int) or h < 1 or c % h):
                raise _err(f"{p}.num_head_channels", f"level {lvl} has attention: {quote(h)} must divide its {c} channels")
        h, c = self.num_head_channels[-1], self.num_channels[-1]
        if not isinstance(h, int) or h < 1 or c % h:
            raise _err(f"{p}.num_head_channels", f"the middle block always has attention: the last entry {quote(h)} must divide {c}")
        for r in self.num_res_blocks:
            _check_pos_int(f"{p}.num_res_blocks", r, MAX_RES_BLOCKS, "MONAI's configs use 1-3 per level")
        _check_total_blocks(f"{p}.num_res_blocks", self.num_res_blocks)
        _check_bool(f"{p}.use_flash_attention", self.use_flash_attention)
        _check_choice(f"{p}.input", self.input, DIFFUSION_INPUTS)


@dataclass(frozen=True)
class DeviceSpec:
    """Precision on the device."""

    mixed_precision: bool = True
    """CUDA autocast with a GradScaler per optimizer (the tutorial's AMP)."""
    amp_dtype: str = "float16"
    """Autocast's lower precision: float16 (with GradScaler) or bfloat16 (no scaler)."""
    alloc_conf: str = ""
    """CUDA caching-allocator settings in PYTORCH_CUDA_ALLOC_CONF syntax, e.g.
    "expandable_segments:True" or "max_split_size_mb:128"; empty: torch's defaults."""

    def __post_init__(self) -> None:
        _check_bool("device.mixed_precision", self.mixed_precision)
        _check_choice("device.amp_dtype", self.amp_dtype, AMP_DTYPES)
        if not isinstance(self.alloc_conf, str):
            raise _err("device.alloc_conf", f"expected a string like 'expandable_segments:True', got {type(self.alloc_conf).__name__}")
        if self.alloc_conf:
            from planner.allocator import parse_alloc_conf

            try:
                parse_alloc_conf(self.alloc_conf)
            except PlannerError as exc:
                raise _err("device.alloc_conf", str(exc)) from None


STRATEGIES = ("none", "ddp", "fsdp", "fsdp-grad-op")
MAX_GPUS = 1024


@dataclass(frozen=True)
class ParallelSpec:
    """Data parallelism: every rank runs the step on its own micro-batch (figures per rank)."""

    gpus: int = 1
    """Data-parallel ranks."""
    strategy: str = "none"
    """none (one GPU), ddp (DistributedDataParallel), fsdp (FSDP2 fully_shard, ZeRO-3) or
    fsdp-grad-op (fully_shard with reshard_after_forward=False, ~ZeRO-2)."""

    def __post_init__(self) -> None:
        _check_pos_int("parallel.gpus (--gpus)", self.gpus, MAX_GPUS, "ranks")
        _check_choice("parallel.strategy (--strategy)", self.strategy, STRATEGIES)
        if self.gpus > 1 and self.strategy == "none":
            raise _err("parallel.strategy (--strategy)",
                       f"{self.gpus} GPUs need ddp, fsdp or fsdp-grad-op (how the ranks share the model)")
        if self.gpus == 1 and self.strategy != "none":
            raise _err("parallel.gpus (--gpus)", f"strategy {self.strategy} needs 2 or more GPUs (one GPU has nothing to share)")


@dataclass(frozen=True)
class TrainingSetup:
    """Everything that decides the memory of one training step."""

    kind: str = "ldm-stage1"
    """ldm-stage1 (autoencoder + GAN + perceptual) or ldm-stage2 (diffusion UNet)."""
    data: DataSpec = field(default_factory=DataSpec)
    """The training volumes."""
    autoencoder: AutoencoderSpec = field(default_factory=AutoencoderSpec)
    """Stage-1 autoencoder (also defines the latent shape for stage 2)."""
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    """Stage-2 diffusion UNet."""
    device: DeviceSpec = field(default_factory=DeviceSpec)
    """Precision."""
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    """GPUs and how they share the model (DDP / FSDP); figures are per rank."""

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        ae = self.autoencoder
        f = ae.downsample_factor
        bad = [s for s in self.data.voxel_size if s % f]
        if bad and (self.kind == "ldm-stage1" or self.diffusion.input == "latent"):
            raise _err(
                "data.voxel_size",
                f"{list(self.data.voxel_size)} must be divisible by {f} "
                f"(AutoencoderKL with {len(ae.num_channels)} levels downsamples by 2**{len(ae.num_channels) - 1})",
            )
        if self.kind == "ldm-stage1" and ae.training.discriminator.enabled:
            layers = ae.training.discriminator.num_layers_d
            out = []
            for s in self.data.voxel_size:
                for _ in range(layers):
                    s //= 2
                out.append(s - 2)
            if min(out) < 1:
                raise _err(
                    "autoencoder.training.discriminator.num_layers_d",
                    f"{layers} layers shrink {list(self.data.voxel_size)} to {out}; "
                    f"use fewer layers or a larger volume",
                )
        if self.kind == "ldm-stage1" and ae.training.use_perceptual_loss:
            from planner.shapes import perceptual_min_side

            net = ae.training.perceptual.network_type
            low = perceptual_min_side(net)
            if min(self.data.voxel_size) < low:
                raise _err(
                    "data.voxel_size",
                    f"{list(self.data.voxel_size)}: the perceptual loss runs the LPIPS {net} backbone on 2D slices, "
                    f"which needs every side >= {low}; use a larger volume or --no-perceptual",
                )
        if self.kind == "ldm-stage2":
            d = self.diffusion
            g = 2 ** (len(d.num_channels) - 1)
            bad = [s for s in self.unet_input_shape[2:] if s % g]
            if bad:
                raise _err(
                    "diffusion.num_channels",
                    f"the UNet input {list(self.unet_input_shape[2:])} must be divisible by {g} "
                    f"({len(d.num_channels)} levels)",
                )

    # -- derived shapes ------------------------------------------------------
    @property
    def batch_size(self) -> int:
        if self.kind == "ldm-stage1":
            return self.autoencoder.training.batch_size
        return self.diffusion.training.batch_size

    @property
    def accumulation_steps(self) -> int:
        if self.kind == "ldm-stage1":
            return self.autoencoder.training.gradient_accumulation_steps
        return self.diffusion.training.gradient_accumulation_steps

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(B, C, *spatial) of one micro-batch of images."""
        return (self.batch_size, self.data.in_channels, *self.data.voxel_size)

    @property
    def latent_spatial(self) -> tuple[int, ...]:
        f = self.autoencoder.downsample_factor
        return tuple(s // f for s in self.data.voxel_size)

    @property
    def unet_input_shape(self) -> tuple[int, ...]:
        """(B, C, *spatial) the diffusion UNet sees."""
        b = self.diffusion.training.batch_size
        if self.diffusion.input == "latent":
            return (b, self.autoencoder.latent_channels, *self.latent_spatial)
        return (b, self.data.in_channels, *self.data.voxel_size)


def spec_to_dict(obj: Any) -> Any:
    """Nested plain-Python view (tuples as lists) for YAML/JSON output."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: spec_to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [spec_to_dict(x) for x in obj]
    return obj


__all__ = [
    "AutoencoderSpec",
    "AutoencoderTraining",
    "DataSpec",
    "DeviceSpec",
    "DiffusionSpec",
    "DiffusionTraining",
    "DiscriminatorSpec",
    "ParallelSpec",
    "PerceptualSpec",
    "TrainingSetup",
    "replace",
    "spec_to_dict",
]
