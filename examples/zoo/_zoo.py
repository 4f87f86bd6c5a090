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
