"""MONAI AutoencoderKL and PatchDiscriminator, lowered to symbolic ops.

Transcribed from monai/networks/nets/autoencoderkl.py, monai/networks/blocks/
spatialattention.py, selfattention.py (SABlock), upsample.py and
patchgan_discriminator.py (MONAI 1.6.1): the same blocks in the same order, the
same local variables, so the same tensors are alive at each point.
"""

from __future__ import annotations

from planner.analytic import ops as O
from planner.analytic.engine import Sim, T, checkpoint
from planner.analytic.nn import BatchNorm, ConvNd, GroupNorm, Identity, Linear, Mod, MonaiConvolution


class AsymmetricPad(Mod):
    def __init__(self, dims: int):
        super().__init__()
        self.pad = (0, 1) * dims

    def forward(self, x: T) -> T:
        return O.pad(x, self.pad)


class Downsample(Mod):
    def __init__(self, sim: Sim, ch: int, dims: int):
        super().__init__()
        self.pad = self.add("pad", AsymmetricPad(dims))
        self.conv = self.add("conv", MonaiConvolution(sim, ch, ch, 3, 2, 0, dims=dims))

    def forward(self, x: T) -> T:
        x = self.pad(x)
        x = self.conv(x)
        return x


class ResBlock(Mod):
    torch_name = "AEKLResBlock"
    fsdp_unit = True  # AEKLResBlock: the repeated block with the most parameters (stepfile.repeated_blocks)
    def __init__(self, sim: Sim, cin: int, cout: int, groups: int, dims: int):
        super().__init__()
        self.norm1 = self.add("norm1", GroupNorm(sim, groups, cin))
        self.conv1 = self.add("conv1", MonaiConvolution(sim, cin, cout, 3, 1, 1, dims=dims))
        self.norm2 = self.add("norm2", GroupNorm(sim, groups, cout))
        self.conv2 = self.add("conv2", MonaiConvolution(sim, cout, cout, 3, 1, 1, dims=dims))
        if cin != cout:
            self.nin_shortcut = self.add("nin_shortcut", MonaiConvolution(sim, cin, cout, 1, 1, 0, dims=dims))
        else:
            self.nin_shortcut = self.add("nin_shortcut", Identity())

    def forward(self, x: T) -> T:
        h = x
        h = self.norm1(h)
        h = O.silu(h)
        h = self.conv1(h)
        h = self.norm2(h)
        h = O.silu(h)
        h = self.conv2(h)
        x = self.nin_shortcut(x)
        return O.add(x, h)


class SABlock(Mod):
    """monai SABlock with one head, separate q/k/v linears (use_combined_linear=False)."""

    attention = True

    def __init__(self, sim: Sim, ch: int, flash: bool, heads: int = 1):
        super().__init__()
        self.to_q = self.add("to_q", Linear(sim, ch, ch))
        self.to_k = self.add("to_k", Linear(sim, ch, ch))
        self.to_v = self.add("to_v", Linear(sim, ch, ch))
        self.out_proj = self.add("out_proj", Linear(sim, ch, ch))
        self.flash = flash
        self.heads = heads

    def _rearrange_in(self, t: T) -> T:
        b, n, c = t.shape
        # Rearrange("b h (l d) -> b l h d"): reshape + permute, both views
        return O.view(t, (b, self.heads, n, c // self.heads))

    def forward(self, x: T) -> T:
        q = self._rearrange_in(self.to_q(x, False))
        k = self._rearrange_in(self.to_k(x, False))
        v = self._rearrange_in(self.to_v(x, False))
        b, h, n, d = q.shape
        if self.flash:
            x = O.sdpa(q, k, v)
        else:
            att_mat = O.mul(O.bmm(q, k, (b, h, n, n)), 0.0)
            att_mat = O.softmax_fp32(att_mat)
            x = O.bmm(att_mat, v, (b, h, n, d), b_first=True)
        x = O.view(x, (b, n, h * d))  # out_rearrange "b l h d -> b h (l d)" (views for one head)
        x = self.out_proj(x, True)
        return x


class SpatialAttentionBlock(Mod):
    attention = True

    def __init__(self, sim: Sim, ch: int, groups: int, flash: bool):
        super().__init__()
        self.norm = self.add("norm", GroupNorm(sim, groups, ch))
        self.attn = self.add("attn", SABlock(sim, ch, flash))

    def forward(self, x: T) -> T:
        residual = x
        shape = x.shape
        x = self.norm(x)
        n = 1
        for s in shape[2:]:
            n *= s
        x = O.view(x, (shape[0], n, shape[1]), permuted=True)  # reshape(b, c, -1).transpose(1, 2): views
        x = self.attn(x)
        x = O.view(x, shape, permuted=True)  # transpose(1, 2).reshape(shape): splits N into H, W, D -> a view
        x = O.add(x, residual)
        return x


class Upsample(Mod):
    """monai UpSample(mode='nontrainable', nearest, scale 2) with its post_conv."""

    def __init__(self, sim: Sim, ch: int, dims: int):
        super().__init__()
        self.up = self.add("upsample_non_trainable", _Interp())
        self.postconv = self.add("postconv", MonaiConvolution(sim, ch, ch, 3, 1, 1, dims=dims))

    def forward(self, x: T) -> T:
        x = self.up(x)
        return self.postconv(x)


class _Interp(Mod):
    def forward(self, x: T) -> T:
        return O.upsample_nearest(x, 2)


class Encoder(Mod):
    def __init__(self, sim: Sim, spec, in_ch: int, dims: int):
        super().__init__()
        ch, g = spec.num_channels, spec.norm_num_groups
        blocks: list[Mod] = [MonaiConvolution(sim, in_ch, ch[0], 3, 1, 1, dims=dims)]
        out_c = ch[0]
        for i in range(len(ch)):
            in_c, out_c = out_c, ch[i]
            for _ in range(spec.num_res_blocks[i]):
                blocks.append(ResBlock(sim, in_c, out_c, g, dims))
                in_c = out_c
                if spec.attention_levels[i]:
                    blocks.append(SpatialAttentionBlock(sim, in_c, g, spec.use_flash_attention))
            if i != len(ch) - 1:
                blocks.append(Downsample(sim, in_c, dims))
        if spec.with_encoder_nonlocal_attn:
            blocks += [
                ResBlock(sim, ch[-1], ch[-1], g, dims),
                SpatialAttentionBlock(sim, ch[-1], g, spec.use_flash_attention),
                ResBlock(sim, ch[-1], ch[-1], g, dims),
            ]
        blocks.append(GroupNorm(sim, g, ch[-1]))
        blocks.append(MonaiConvolution(sim, ch[-1], spec.latent_channels, 3, 1, 1, dims=dims))
        for i, b in enumerate(blocks):
            self.add(f"blocks.{i}", b)
        self.blocks = blocks

    def forward(self, x: T) -> T:
        for block in self.blocks:
            x = block(x)
        return x


class Decoder(Mod):
    def __init__(self, sim: Sim, spec, out_ch: int, dims: int):
        super().__init__()
        ch, g = list(reversed(spec.num_channels)), spec.norm_num_groups
        att = list(reversed(spec.attention_levels))
        nres = list(reversed(spec.num_res_blocks))
        blocks: list[Mod] = [MonaiConvolution(sim, spec.latent_channels, ch[0], 3, 1, 1, dims=dims)]
        if spec.with_decoder_nonlocal_attn:
            blocks += [
                ResBlock(sim, ch[0], ch[0], g, dims),
                SpatialAttentionBlock(sim, ch[0], g, spec.use_flash_attention),
                ResBlock(sim, ch[0], ch[0], g, dims),
            ]
        out_c = ch[0]
        for i in range(len(ch)):
            in_c, out_c = out_c, ch[i]
            for _ in range(nres[i]):
                blocks.append(ResBlock(sim, in_c, out_c, g, dims))
                in_c = out_c
                if att[i]:
                    blocks.append(SpatialAttentionBlock(sim, in_c, g, spec.use_flash_attention))
            if i != len(ch) - 1:
                blocks.append(Upsample(sim, in_c, dims))
        blocks.append(GroupNorm(sim, g, in_c))
        blocks.append(MonaiConvolution(sim, in_c, out_ch, 3, 1, 1, dims=dims))
        for i, b in enumerate(blocks):
            self.add(f"blocks.{i}", b)
        self.blocks = blocks

    def forward(self, x: T) -> T:
        for block in self.blocks:
            x = block(x)
        return x


class AutoencoderKL(Mod):
    def __init__(self, sim: Sim, setup):
        super().__init__()
        spec, dims, cin = setup.autoencoder, setup.data.spatial_dims, setup.data.in_channels
        self.encoder = self.add("encoder", Encoder(sim, spec, cin, dims))
        self.decoder = self.add("decoder", Decoder(sim, spec, cin, dims))
        lc = spec.latent_channels
        self.quant_conv_mu = self.add("quant_conv_mu", MonaiConvolution(sim, lc, lc, 1, 1, 0, dims=dims))
        self.quant_conv_log_sigma = self.add("quant_conv_log_sigma", MonaiConvolution(sim, lc, lc, 1, 1, 0, dims=dims))
        self.post_quant_conv = self.add("post_quant_conv", MonaiConvolution(sim, lc, lc, 1, 1, 0, dims=dims))
        self.use_checkpoint = spec.training.use_gradient_checkpointing
        self.sim = sim

    def encode(self, x: T) -> tuple[T, T]:
        if self.use_checkpoint:
            h = checkpoint(self.sim, self.encoder, x)
        else:
            h = self.encoder(x)
        z_mu = self.quant_conv_mu(h)
        z_log_var = self.quant_conv_log_sigma(h)
        z_log_var = O.clamp(z_log_var, -30.0, 20.0)
        z_sigma = O.exp(O.div(z_log_var, 2))
        return z_mu, z_sigma

    def sampling(self, z_mu: T, z_sigma: T) -> T:
        eps = O.randn_like(z_sigma)
        z_vae = O.add(z_mu, O.mul(eps, z_sigma))
        return z_vae

    def decode(self, z: T) -> T:
        z = self.post_quant_conv(z)
        if self.use_checkpoint:
            dec = checkpoint(self.sim, self.decoder, z)
        else:
            dec = self.decoder(z)
        return dec

    def forward(self, x: T) -> tuple[T, T, T]:
        z_mu, z_sigma = self.encode(x)
        z = self.sampling(z_mu, z_sigma)
        reconstruction = self.decode(z)
        return reconstruction, z_mu, z_sigma


class InstanceNorm(Mod):
    """nn.InstanceNorm3d(affine=False) -> aten instance_norm (Normalization.cpp): the input
    made contiguous and viewed as (1, B*C, ...), batch_norm without weight or running
    stats, the output viewed back."""

    def forward(self, x: T) -> T:
        if x.cl:
            x = O.contiguous_copy(x)
        b, c = x.shape[0], x.shape[1]
        flat = O.view(x, (1, b * c, *x.shape[2:]))
        out = O.batch_norm(flat, None, None, [])
        return O.view(out, x.shape)


class _DiscLayer(Mod):
    """monai Convolution(conv -> [BatchNorm | InstanceNorm] -> Dropout(0) -> LeakyReLU(0.2))."""

    def __init__(self, sim: Sim, cin: int, cout: int, stride: int, bias: bool, norm: str | None, dims: int):
        super().__init__()
        self.conv = self.add("conv", ConvNd(sim, cin, cout, 4, stride, 1, bias, dims))
        if norm == "batch":
            self.norm = self.add("adn.N", BatchNorm(sim, cout))
        elif norm == "instance":
            self.norm = self.add("adn.N", InstanceNorm())
        else:
            self.norm = None
        self.act = self.add("adn.A", _Leaky())

    def forward(self, x: T) -> T:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class _Leaky(Mod):
    def forward(self, x: T) -> T:
        return O.leaky_relu(x, 0.2)


class PatchDiscriminator(Mod):
    def __init__(self, sim: Sim, setup):
        super().__init__()
        d, dims, cin = setup.autoencoder.training.discriminator, setup.data.spatial_dims, setup.data.in_channels
        layers: list[tuple[str, Mod]] = [("initial_conv", _DiscLayer(sim, cin, d.num_channels, 2, True, None, dims))]
        ic, oc = d.num_channels, d.num_channels * 2
        for i in range(d.num_layers_d):
            stride = 1 if i == d.num_layers_d - 1 else 2
            layers.append((str(i), _DiscLayer(sim, ic, oc, stride, False, d.norm, dims)))
            ic, oc = oc, oc * 2
        layers.append(("final_conv", MonaiConvolution(sim, ic, 1, 4, 1, 1, dims=dims)))
        for name, m in layers:
            self.add(name, m)
        self.layers = [m for _, m in layers]

    def forward(self, x: T) -> list[T]:
        out = [x]
        for m in self.layers:
            intermediate_output = m(out[-1])
            out.append(intermediate_output)
            del intermediate_output
        return out[1:]
