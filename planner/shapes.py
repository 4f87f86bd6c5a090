"""Which volume sizes the networks accept: divisibility and minimum sizes. Standard library only.

Derived from the layer stacks, not guessed:

* AutoencoderKL with L levels downsamples L-1 times by 2 (a stride-2 conv per level
  but the last): every side must be divisible by 2**(L-1).
* DiffusionModelUNet with L levels also downsamples L-1 times: its input (the latent,
  side / 2**(L_ae-1), or the image) must be divisible by 2**(L-1). On the latent the
  image side must therefore be divisible by 2**(L_ae-1) * 2**(L-1).
* PatchDiscriminator (MONAI): kernel 4, padding 1; an initial stride-2 conv, then
  num_layers_d convs (stride 2 but the last, stride 1) each followed by a norm, then a
  stride-1 final conv. planner.spec rejects a side s with s // 2**layers - 2 < 1,
  i.e. it needs s >= 3 * 2**layers (24 for 3 layers, 6 for 1 layer).
* The 2.5D perceptual loss runs the LPIPS 2D backbone on slices made of every pair of
  sides, so every side must pass the backbone's conv/pool stack (torchvision layers
  as lpips uses them; output = floor((n + 2p - k) / s) + 1, ceil with ceil_mode; an
  input smaller than an unpadded kernel is an error):
  - squeeze (squeezenet1_1): conv k3 s2, then three max pools k3 s2 ceil_mode:
    n -> floor((n-3)/2)+1 must be >= 12 so that the pools see 12 -> 6 -> 3 -> 1: n >= 25.
  - alex (features[:12]): conv k11 s4 p2, pool k3 s2, pool k3 s2: n >= 31.
  - vgg (features[:30]): four 2x2 max pools: n >= 16.
  Checked against torch: at 8x8x8 the squeeze backbone raises "Calculated output size:
  (128x0x0). Output size is too small".
"""

from __future__ import annotations

import math


def _out(n: int, k: int, s: int, p: int = 0, ceil: bool = False) -> int:
    """PyTorch's conv/pool output size; 0 when the input is too small for the kernel."""
    if n + 2 * p < k:
        return 0
    span = n + 2 * p - k
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + p:
        o -= 1
    return o


_PERCEPTUAL_STACKS = {
    "squeeze": [(3, 2, 0, False), (3, 2, 0, True), (3, 2, 0, True), (3, 2, 0, True)],
    "alex": [(11, 4, 2, False), (3, 2, 0, False), (3, 2, 0, False)],
    "vgg": [(2, 2, 0, False)] * 4,
}


def perceptual_min_side(network_type: str) -> int:
    """Smallest slice side the LPIPS backbone accepts (squeeze 25, alex 31, vgg 16)."""
    stack = _PERCEPTUAL_STACKS[network_type]
    n = 1
    while True:
        m = n
        for k, s, p, c in stack:
            m = _out(m, k, s, p, c)
            if m < 1:
                break
        else:
            return n
        n += 1


def discriminator_min_side(num_layers_d: int) -> int:
    """Smallest side planner.spec accepts for the PatchDiscriminator: 3 * 2**layers."""
    return 3 * 2**num_layers_d


def constraints(setup) -> dict:
    """Per network: the divisibility ("step") and the minimum side it imposes, and the
    combined step / minimum side for the volume (min side rounded up to the step)."""
    nets: dict[str, dict] = {}
    ae = setup.autoencoder
    ae_f = ae.downsample_factor
    if setup.kind == "ldm-stage1":
        nets["autoencoder"] = {"step": ae_f, "min_side": ae_f,
                               "why": f"AutoencoderKL, {len(ae.num_channels)} levels: divisible by 2**{len(ae.num_channels) - 1}"}
        tr = ae.training
        if tr.discriminator.enabled:
            L = tr.discriminator.num_layers_d
            nets["discriminator"] = {"step": 1, "min_side": discriminator_min_side(L),
                                     "why": f"PatchDiscriminator, {L} layers (3 * 2**{L})"}
        if tr.use_perceptual_loss:
            net = tr.perceptual.network_type
            nets["perceptual"] = {"step": 1, "min_side": perceptual_min_side(net),
                                  "why": f"LPIPS {net} backbone on 2D slices"}
    else:
        d = setup.diffusion
        u_f = 2 ** (len(d.num_channels) - 1)
        if d.input == "latent":
            nets["unet"] = {"step": ae_f * u_f, "min_side": ae_f * u_f,
                            "why": f"DiffusionModelUNet, {len(d.num_channels)} levels, on the latent (/{ae_f}): "
                                   f"divisible by {ae_f} x {u_f}"}
        else:
            nets["unet"] = {"step": u_f, "min_side": u_f,
                            "why": f"DiffusionModelUNet, {len(d.num_channels)} levels, on the image: divisible by {u_f}"}
    step = 1
    for v in nets.values():
        step = step * v["step"] // math.gcd(step, v["step"])
    low = max(v["min_side"] for v in nets.values())
    return {"step": step, "min_side": -(-low // step) * step, "networks": nets}
