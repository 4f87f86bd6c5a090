"""What the zoo's step files share: the optimizer, a segmentation batch, the supervised step.

The zoo (``examples/zoo/``) builds third-party models exactly as their libraries document them,
with the library's own loss; each file's default knobs are a small size (tests/test_zoo.py) and its
``FULL`` / ``FULL_BATCH`` the benchmark's size (benchmarks/bench_zoo.py). No file downloads weights
or data: Hugging Face and diffusers models are built from config objects."""

import torch


def adamw(nets, lr=1e-4):
    """One AdamW per trained network (MONAI's and Hugging Face's tutorials use Adam/AdamW)."""
    return {name: torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5) for name, net in nets.items()
            if any(p.requires_grad for p in net.parameters())}


def segmentation_batch(batch_size, roi, classes, in_channels=1):
    """An image and an integer label map (B, 1, *roi) on the device, as MONAI's loaders give them."""
    image = torch.randn(batch_size, in_channels, *roi, device="cuda")
    label = torch.randint(0, classes, (batch_size, 1, *roi), device="cuda")
    return image, label


def semantic_batch(batch_size, roi, channels, labels):
    """An image (or latent) and a one-hot semantic map of ``labels`` classes (SPADE's condition)."""
    label = torch.randint(0, labels, (batch_size, *roi), device="cuda")
    seg = torch.nn.functional.one_hot(label, labels).movedim(-1, 1).float()
    return torch.randn(batch_size, channels, *roi, device="cuda"), seg


def supervised(nets, opts, batch, vp, loss_fn, name="model"):
    """``loss_fn(model(x), y)``; backward; step (MONAI's supervised tutorials, per iteration)."""
    x, y = batch
    vp.zero_grad(opts[name])
    with vp.autocast():
        vp.keep.loss = loss_fn(nets[name](x), y)
    vp.backward(vp.keep.loss, opts[name])
    vp.step(opts[name])


def model_loss(nets, opts, batch, vp, name="model"):
    """A Hugging Face model's own loss: ``model(**batch).loss`` with ``labels`` in the batch."""
    vp.zero_grad(opts[name])
    with vp.autocast():
        vp.keep.loss = nets[name](**batch).loss
    vp.backward(vp.keep.loss, opts[name])
    vp.step(opts[name])


def classification_batch(batch_size, roi, classes=2):
    """A volume and one class index per sample."""
    return torch.randn(batch_size, 1, *roi, device="cuda"), torch.randint(0, classes, (batch_size,), device="cuda")


def classify(nets, opts, batch, vp, logits=lambda out: out, name="model"):
    """Cross-entropy on ``logits(model(x))`` (MONAI's classification tutorials)."""
    x, y = batch
    vp.zero_grad(opts[name])
    with vp.autocast():
        vp.keep.loss = torch.nn.CrossEntropyLoss()(logits(nets[name](x)), y)
    vp.backward(vp.keep.loss, opts[name])
    vp.step(opts[name])


def causal_lm_batch(batch_size, seq, vocab_size):
    """Token ids and the same ids as ``labels`` (the model shifts them for next-token loss)."""
    ids = torch.randint(0, vocab_size, (batch_size, seq), device="cuda")
    return {"input_ids": ids, "labels": ids}


def noise_prediction(nets, opts, vp, sample, scheduler, predict, name="model"):
    """A DDPM training step: noise at random timesteps added by ``scheduler.add_noise``,
    ``predict(noisy, timesteps)`` for the noise, MSE against it (MONAI's and diffusers' examples)."""
    vp.zero_grad(opts[name])
    with vp.autocast():
        noise = torch.randn_like(sample)
        timesteps = torch.randint(0, 1000, (sample.shape[0],), device=sample.device).long()
        noisy = scheduler.add_noise(sample, noise, timesteps)
        vp.keep.loss = torch.nn.functional.mse_loss(predict(noisy, timesteps).float(), noise.float())
    vp.backward(vp.keep.loss, opts[name])
    vp.step(opts[name])


def autoencoder_gan(nets, opts, images, vp, *condition, kl_weight=1e-6, adv_weight=0.01):
    """MONAI's generative tutorials' stage-1 step after the adversarial warm-up: the autoencoder on
    L1 + KL + PatchAdversarialLoss (least squares), then the discriminator on fake and real."""
    from monai.losses import PatchAdversarialLoss

    F = torch.nn.functional
    adv = PatchAdversarialLoss(criterion="least_squares")
    ae, disc, k = nets["autoencoder"], nets["discriminator"], vp.keep
    vp.zero_grad(opts["autoencoder"])
    with vp.autocast():
        k.reconstruction, z_mu, z_sigma = ae(images, *condition)
        logits_fake = disc(k.reconstruction.contiguous().float())[-1]
        kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1,
                             dim=list(range(1, z_mu.ndim)))
        kl = torch.sum(kl) / kl.shape[0]
        k.loss_g = (F.l1_loss(k.reconstruction.float(), images.float()) + kl_weight * kl
                    + adv_weight * adv(logits_fake, target_is_real=True, for_discriminator=False))
    vp.backward(k.loss_g, opts["autoencoder"])
    vp.step(opts["autoencoder"])
    vp.zero_grad(opts["discriminator"])
    with vp.autocast():
        fake = adv(disc(k.reconstruction.contiguous().detach())[-1], target_is_real=False, for_discriminator=True)
        real = adv(disc(images.contiguous().detach())[-1], target_is_real=True, for_discriminator=True)
        k.loss_d = adv_weight * (fake + real) * 0.5
    vp.backward(k.loss_d, opts["discriminator"])
    vp.step(opts["discriminator"])
