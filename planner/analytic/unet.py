"""MONAI DiffusionModelUNet and the stage-2 (DDPM) training step, on symbolic tensors.

Transcribed from monai/networks/nets/diffusion_model_unet.py (DiffusionModelUNet,
DiffusionUNetResnetBlock, DownBlock/AttnDownBlock, AttnMidBlock, UpBlock/AttnUpBlock,
DiffusionUnetDownsample, WrappedUpsample, get_timestep_embedding),
monai/networks/blocks/spatialattention.py and selfattention.py (SABlock with
separate q/k/v linears), monai/inferers/inferer.py (DiffusionInferer.__call__) and
monai/networks/schedulers/scheduler.py (add_noise), and the step the tracer runs,
``planner/stepfiles/ldm_stage2.py``: the same blocks, statements and local variables in the
same order, so the same tensors are alive at each point.

Parameters are created in ``named_parameters()`` order (the profiler registers them
in that order): for example AttnDownBlock registers ``attentions`` before ``resnets``
and SABlock registers ``out_proj`` before ``to_q``/``to_k``/``to_v``.
"""

from __future__ import annotations

import math

from planner.analytic import ops as O
from planner.analytic import ops_unet as OU
from planner.analytic.engine import Sim, T
from planner.analytic.models import Upsample
from planner.analytic.nn import GroupNorm, Identity, Linear, Mod, MonaiConvolution
from planner.analytic.optim import GradScaler, Optimizer
from planner.analytic.simulate import SimResult, _Ctx, _finish, _float, next_batch, simulated_micro_steps, start_iteration, wrap
from planner.spec import TrainingSetup

NUM_TRAIN_TIMESTEPS = 1000


# --- small modules ------------------------------------------------------------------------


class SiLU(Mod):
    def forward(self, x: T) -> T:
        return O.silu(x)


class _Rearrange(Mod):
    """einops Rearrange (a module: it shows up in named_modules and in the module stack)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: T) -> T:
        return self.fn(x)


class TimeEmbed(Mod):
    """nn.Sequential(Linear(ch, 4ch), SiLU(), Linear(4ch, 4ch))."""

    def __init__(self, sim: Sim, ch: int, dim: int) -> None:
        super().__init__()
        self.l0 = self.add("0", Linear(sim, ch, dim))
        self.act = self.add("1", SiLU())
        self.l2 = self.add("2", Linear(sim, dim, dim))

    def forward(self, x: T) -> T:
        x = self.l0(x)
        x = self.act(x)
        x = self.l2(x)
        return x


class OutBlock(Mod):
    """nn.Sequential(GroupNorm, SiLU, Convolution(conv_only))."""

    def __init__(self, sim: Sim, groups: int, ch: int, cout: int, dims: int) -> None:
        super().__init__()
        self.norm = self.add("0", GroupNorm(sim, groups, ch))
        self.act = self.add("1", SiLU())
        self.conv = self.add("2", MonaiConvolution(sim, ch, cout, 3, 1, 1, dims=dims))

    def forward(self, x: T) -> T:
        x = self.norm(x)
        x = self.act(x)
        x = self.conv(x)
        return x


class DiffusionUnetDownsample(Mod):
    """use_conv=True: Convolution(stride 2, kernel 3, padding 1) as child 'op'."""

    def __init__(self, sim: Sim, ch: int, dims: int) -> None:
        super().__init__()
        self.op = self.add("op", MonaiConvolution(sim, ch, ch, 3, 2, 1, dims=dims))

    def forward(self, x: T, emb: T | None = None) -> T:
        del emb
        output = self.op(x)
        return output


class WrappedUpsample(Upsample):
    def forward(self, x: T, emb: T | None = None) -> T:  # type: ignore[override]
        del emb
        upsampled = super().forward(x)
        return upsampled


# --- resnet block --------------------------------------------------------------------------


class DiffusionUNetResnetBlock(Mod):
    fsdp_unit = True  # the repeated block with the most parameters (stepfile.repeated_blocks)
    def __init__(self, sim: Sim, dims: int, cin: int, temb: int, cout: int, groups: int) -> None:
        super().__init__()
        self.dims = dims
        self.norm1 = self.add("norm1", GroupNorm(sim, groups, cin))
        self.nonlinearity = self.add("nonlinearity", SiLU())
        self.conv1 = self.add("conv1", MonaiConvolution(sim, cin, cout, 3, 1, 1, dims=dims))
        self.time_emb_proj = self.add("time_emb_proj", Linear(sim, temb, cout))
        self.norm2 = self.add("norm2", GroupNorm(sim, groups, cout))
        self.conv2 = self.add("conv2", MonaiConvolution(sim, cout, cout, 3, 1, 1, dims=dims))
        if cout == cin:
            self.skip_connection = self.add("skip_connection", Identity())
        else:
            self.skip_connection = self.add("skip_connection", MonaiConvolution(sim, cin, cout, 1, 1, 0, dims=dims))

    def forward(self, x: T, emb: T) -> T:
        h = x
        h = self.norm1(h)
        h = self.nonlinearity(h)

        h = self.conv1(h)

        # self.time_emb_proj(self.nonlinearity(emb))[:, :, None, None(, None)]: views
        p = self.time_emb_proj(self.nonlinearity(emb))
        temb = O.view(p, (*p.shape, *([1] * self.dims)))
        del p
        h = O.add(h, temb)

        h = self.norm2(h)
        h = self.nonlinearity(h)
        h = self.conv2(h)
        output = O.add(self.skip_connection(x), h)
        return output


# --- attention -----------------------------------------------------------------------------


class SABlock(Mod):
    """monai SABlock(hidden_size=C, num_heads=C // num_head_channels, qkv_bias=True,
    use_combined_linear=False, include_fc=True, dropout 0)."""

    attention = True

    def __init__(self, sim: Sim, ch: int, heads: int, flash: bool) -> None:
        super().__init__()
        # registration order: out_proj, to_q, to_k, to_v, then the Rearrange modules
        self.out_proj = self.add("out_proj", Linear(sim, ch, ch))
        self.to_q = self.add("to_q", Linear(sim, ch, ch))
        self.to_k = self.add("to_k", Linear(sim, ch, ch))
        self.to_v = self.add("to_v", Linear(sim, ch, ch))
        self.input_rearrange = self.add("input_rearrange", _Rearrange(lambda t: OU.heads_split(t, heads, flash)))
        self.out_rearrange = self.add("out_rearrange", _Rearrange(lambda t: OU.heads_merge(t, flash)))
        self.use_flash_attention = flash

    def forward(self, x: T) -> T:
        # x: (b, n, c), a transposed view: the q/k/v linears take at::linear's matmul path
        q = self.input_rearrange(self.to_q(x, False))
        k = self.input_rearrange(self.to_k(x, False))
        v = self.input_rearrange(self.to_v(x, False))

        if self.use_flash_attention:
            x = O.sdpa(q, k, v)
        else:
            att_mat = O.mul(OU.einsum_qk(q, k), 0.0)  # * self.scale

            att_mat = O.softmax_fp32(att_mat)

            x = OU.einsum_av(att_mat, v)

        x = self.out_rearrange(x)
        x = self.out_proj(x, True)
        return x


class SpatialAttentionBlock(Mod):
    attention = True

    def __init__(self, sim: Sim, ch: int, head_channels: int, groups: int, flash: bool) -> None:
        super().__init__()
        self.norm = self.add("norm", GroupNorm(sim, groups, ch))
        self.attn = self.add("attn", SABlock(sim, ch, ch // head_channels, flash))

    def forward(self, x: T) -> T:
        residual = x
        shape = x.shape
        x = self.norm(x)
        x = OU.tokens_view(x)  # reshape(b, c, -1).transpose(1, 2): views
        x = self.attn(x)
        x = O.view(x, shape, permuted=True)  # transpose(1, 2).reshape(shape): a view
        x = O.add(x, residual)
        return x


# --- down / mid / up blocks ------------------------------------------------------------------


class DownBlock(Mod):
    def __init__(self, sim: Sim, dims: int, cin: int, cout: int, temb: int, nres: int, groups: int,
                 add_downsample: bool, attn: bool, head_channels: int, flash: bool) -> None:
        super().__init__()
        self.with_attn = attn
        resnets, attentions = [], []
        for i in range(nres):
            c = cin if i == 0 else cout
            resnets.append((sim, dims, c, temb, cout, groups))
            if attn:
                attentions.append((sim, cout, head_channels, groups, flash))
        # AttnDownBlock registers attentions before resnets
        self.attentions = [self.add(f"attentions.{i}", SpatialAttentionBlock(*a)) for i, a in enumerate(attentions)]
        self.resnets = [self.add(f"resnets.{i}", DiffusionUNetResnetBlock(*r)) for i, r in enumerate(resnets)]
        self.downsampler = self.add("downsampler", DiffusionUnetDownsample(sim, cout, dims)) if add_downsample else None

    def forward(self, hidden_states: T, temb: T) -> tuple[T, list[T]]:
        output_states = []

        if self.with_attn:
            for resnet, attn in zip(self.resnets, self.attentions):
                hidden_states = resnet(hidden_states, temb)
                hidden_states = OU.contiguous(attn(hidden_states))
                output_states.append(hidden_states)
        else:
            for resnet in self.resnets:
                hidden_states = resnet(hidden_states, temb)
                output_states.append(hidden_states)

        if self.downsampler is not None:
            hidden_states = self.downsampler(hidden_states, temb)
            output_states.append(hidden_states)

        return hidden_states, output_states


class AttnMidBlock(Mod):
    def __init__(self, sim: Sim, dims: int, ch: int, temb: int, groups: int, head_channels: int, flash: bool) -> None:
        super().__init__()
        self.resnet_1 = self.add("resnet_1", DiffusionUNetResnetBlock(sim, dims, ch, temb, ch, groups))
        # (not ``self.attention``: that is Mod's flag for the breakdown's 'attention' network)
        self.attn_block = self.add("attention", SpatialAttentionBlock(sim, ch, head_channels, groups, flash))
        self.resnet_2 = self.add("resnet_2", DiffusionUNetResnetBlock(sim, dims, ch, temb, ch, groups))

    def forward(self, hidden_states: T, temb: T) -> T:
        hidden_states = self.resnet_1(hidden_states, temb)
        hidden_states = OU.contiguous(self.attn_block(hidden_states))
        hidden_states = self.resnet_2(hidden_states, temb)

        return hidden_states


class UpBlock(Mod):
    def __init__(self, sim: Sim, dims: int, cin: int, prev: int, cout: int, temb: int, nres: int, groups: int,
                 add_upsample: bool, attn: bool, head_channels: int, flash: bool) -> None:
        super().__init__()
        self.with_attn = attn
        self.resnets = []
        for i in range(nres):
            skip = cin if i == nres - 1 else cout
            rin = prev if i == 0 else cout
            blk = DiffusionUNetResnetBlock(sim, dims, rin + skip, temb, cout, groups)
            self.resnets.append(self.add(f"resnets.{i}", blk))
        self.attentions = []
        if attn:
            for i in range(nres):
                att = SpatialAttentionBlock(sim, cout, head_channels, groups, flash)
                self.attentions.append(self.add(f"attentions.{i}", att))
        self.upsampler = self.add("upsampler", WrappedUpsample(sim, cout, dims)) if add_upsample else None

    def forward(self, hidden_states: T, res_hidden_states_list: list[T], temb: T) -> T:
        if self.with_attn:
            for resnet, attn in zip(self.resnets, self.attentions):
                # pop res hidden states
                res_hidden_states = res_hidden_states_list[-1]
                res_hidden_states_list = res_hidden_states_list[:-1]
                hidden_states = O.cat([hidden_states, res_hidden_states], dim=1)

                hidden_states = resnet(hidden_states, temb)
                hidden_states = OU.contiguous(attn(hidden_states))
        else:
            for resnet in self.resnets:
                # pop res hidden states
                res_hidden_states = res_hidden_states_list[-1]
                res_hidden_states_list = res_hidden_states_list[:-1]
                hidden_states = O.cat([hidden_states, res_hidden_states], dim=1)

                hidden_states = resnet(hidden_states, temb)

        if self.upsampler is not None:
            hidden_states = self.upsampler(hidden_states, temb)

        return hidden_states


# --- the UNet --------------------------------------------------------------------------------


def get_timestep_embedding(timesteps: T, embedding_dim: int, max_period: int = 10000) -> T:
    half_dim = embedding_dim // 2
    exponent = O.mul(OU.arange(half_dim, "f32"), -math.log(max_period))  # -log(P) * arange(...)
    freqs = O.exp(O.div(exponent, half_dim))

    args = O.mul(O.to_copy(O.view(timesteps, (timesteps.shape[0], 1)), "f32"), O.view(freqs, (1, half_dim)))
    embedding = O.cat([OU.cos(args), OU.sin(args)], dim=-1)

    # zero pad
    if embedding_dim % 2 == 1:
        embedding = O.pad(embedding, (0, 1, 0, 0))

    return embedding


class DiffusionModelUNet(Mod):
    def __init__(self, sim: Sim, setup: TrainingSetup) -> None:
        super().__init__()
        d = setup.diffusion
        dims = setup.data.spatial_dims
        ch = setup.unet_input_shape[1]
        channels, att, heads = d.num_channels, d.attention_levels, d.num_head_channels
        nres, g, flash = d.num_res_blocks, d.norm_num_groups, d.use_flash_attention
        self.block_out_channels = channels
        self.conv_in = self.add("conv_in", MonaiConvolution(sim, ch, channels[0], 3, 1, 1, dims=dims))
        temb = channels[0] * 4
        self.time_embed = self.add("time_embed", TimeEmbed(sim, channels[0], temb))
        self.down_blocks: list[DownBlock] = []
        output_channel = channels[0]
        for i in range(len(channels)):
            input_channel = output_channel
            output_channel = channels[i]
            final = i == len(channels) - 1
            blk = DownBlock(
                sim, dims, input_channel, output_channel, temb, nres[i], g, not final, att[i], heads[i], flash
            )
            self.down_blocks.append(self.add(f"down_blocks.{i}", blk))
        self.middle_block = self.add("middle_block", AttnMidBlock(sim, dims, channels[-1], temb, g, heads[-1], flash))
        self.up_blocks: list[UpBlock] = []
        rch, rres = list(reversed(channels)), list(reversed(nres))
        ratt, rheads = list(reversed(att)), list(reversed(heads))
        output_channel = rch[0]
        for i in range(len(rch)):
            prev = output_channel
            output_channel = rch[i]
            input_channel = rch[min(i + 1, len(channels) - 1)]
            final = i == len(channels) - 1
            blk = UpBlock(
                sim, dims, input_channel, prev, output_channel, temb, rres[i] + 1, g, not final, ratt[i], rheads[i],
                flash,
            )
            self.up_blocks.append(self.add(f"up_blocks.{i}", blk))
        self.out = self.add("out", OutBlock(sim, g, channels[0], ch, dims))

    def forward(self, x: T, timesteps: T) -> T:
        # 1. time
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0])

        # t_emb.to(dtype=x.dtype): the input is fp32 (randn), so a no-op
        if t_emb.dtype != x.dtype:  # pragma: no cover - the step's input is fp32
            t_emb = O.to_copy(t_emb, x.dtype)
        emb = self.time_embed(t_emb)

        # 3. initial convolution
        h = self.conv_in(x)

        # 4. down
        down_block_res_samples: list[T] = [h]
        for downsample_block in self.down_blocks:
            h, res_samples = downsample_block(h, emb)
            for residual in res_samples:
                down_block_res_samples.append(residual)

        # 5. mid
        h = self.middle_block(h, emb)

        # 6. up
        for upsample_block in self.up_blocks:
            idx: int = -len(upsample_block.resnets)
            res_samples = down_block_res_samples[idx:]
            down_block_res_samples = down_block_res_samples[:idx]
            h = upsample_block(h, res_samples, emb)

        # 7. output block
        output = self.out(h)

        return output


# --- scheduler / inferer -------------------------------------------------------------------


class DDPMScheduler:
    """The part of monai's Scheduler the training step touches: add_noise."""

    def __init__(self, alphas_cumprod: T) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.num_train_timesteps = NUM_TRAIN_TIMESTEPS

    def add_noise(self, original_samples: T, noise: T, timesteps: T) -> T:
        # alphas_cumprod.to(device, dtype) and timesteps.to(device): no-ops (fp32, same device)
        nd = len(original_samples.shape)
        a = OU.pow_scalar(OU.index(self.alphas_cumprod, timesteps), 0.5)
        sqrt_alpha_cumprod = O.view(a, (*a.shape, *([1] * (nd - 1))))  # unsqueeze_right: a view
        del a
        b = OU.pow_scalar(O.rsub(OU.index(self.alphas_cumprod, timesteps), 1.0), 0.5)
        sqrt_one_minus_alpha_prod = O.view(b, (*b.shape, *([1] * (nd - 1))))
        del b

        noisy_samples = O.add(O.mul(sqrt_alpha_cumprod, original_samples), O.mul(sqrt_one_minus_alpha_prod, noise))
        return noisy_samples


class DiffusionInferer:
    def __init__(self, scheduler: DDPMScheduler) -> None:
        self.scheduler = scheduler

    def __call__(self, inputs: T, diffusion_model: DiffusionModelUNet, noise: T, timesteps: T) -> T:
        noisy_image = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        prediction = diffusion_model(noisy_image, timesteps)

        return prediction


# --- the step ----------------------------------------------------------------------------------


def simulate_stage2(setup: TrainingSetup) -> SimResult:
    ctx = _Ctx(setup)
    sim, mem = ctx.sim, ctx.sim.mem
    tr = setup.diffusion.training
    roots: dict[str, Mod] = {"unet": ctx.register("unet", DiffusionModelUNet(sim, setup))}
    model = roots["unet"]
    model = wrap(ctx, {"unet": model})["unet"]
    optimizer = Optimizer(sim, tr.optimizer, model.parameters(), "unet")
    scaler = GradScaler(sim, "unet") if ctx.use_scaler else None
    # the scheduler's alphas_cumprod (1000 fp32), a parameters tensor of the frozen network
    # "scheduler" (its buffer in the step file the tracer runs, planner/stepfiles/ldm_stage2.py)
    alphas = sim.new((NUM_TRAIN_TIMESTEPS,), "f32", "external")
    info = mem.info[alphas.st.uid]
    info.category, info.network = "parameters", "scheduler"
    scheduler = DDPMScheduler(alphas)
    inferer = DiffusionInferer(scheduler)
    accum = tr.gradient_accumulation_steps
    shape = setup.unet_input_shape
    it2 = 0
    images = noise = timesteps = noise_pred = loss = None  # noqa: F841
    for iteration in (1, 2):
        it2 = start_iteration(mem, iteration, it2)
        for micro in range(simulated_micro_steps(accum)):
            # the new batch is made while the previous one is still referenced
            images = next_batch(mem, iteration, shape)
            if micro == 0:
                optimizer.zero_grad()
            mem.phase = "forward"
            mem.network_hint = "losses"
            with ctx.autocast():
                noise = O.randn_like(images)
                timesteps = OU.randint((images.shape[0],))
                noise_pred = inferer(inputs=images, diffusion_model=model, noise=noise, timesteps=timesteps)
                loss = O.mse_loss(_float(noise_pred), _float(noise))
                if accum > 1:
                    loss = O.div(loss, accum)
            ctx.backward(loss, scaler)
            if micro == simulated_micro_steps(accum) - 1:
                ctx.optimizer_step(optimizer, scaler)
    mem.phase = "setup"
    res = _finish(ctx, it2, roots)
    res.params["scheduler"] = 0  # the step file's frozen network, without parameters
    return res


__all__ = ["DiffusionModelUNet", "simulate_stage2"]
