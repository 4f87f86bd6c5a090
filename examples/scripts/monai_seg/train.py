"""3D segmentation training as MONAI's tutorials write it (spleen / BTCV style), on synthetic volumes.

Plain PyTorch + MONAI: argparse, a Dataset over .npy volumes it writes on first run into
--data-dir, a DataLoader with workers, DynUNet (or SwinUNETR), DiceCELoss, AMP with a GradScaler,
a sliding-window validation every --val-every steps, torch.save of the best model, tqdm when
installed. Nothing is downloaded.

    python examples/scripts/monai_seg/train.py --max-steps 20                  # trains on the CPU or a GPU
    vramplan run --gpu 24GB -- python examples/scripts/monai_seg/train.py      # plans it without one
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet, SwinUNETR
from torch.utils.data import DataLoader, Dataset

try:
    from tqdm import tqdm
except ImportError:  # plain progress lines instead
    tqdm = None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "vramplan_monai_seg"),
                   help="where the synthetic volumes are written on first run (and the best model saved)")
    p.add_argument("--volumes", type=int, default=6, help="synthetic volumes (the last two validate)")
    p.add_argument("--size", type=int, default=128, help="edge of each cubic volume, voxels")
    p.add_argument("--roi", type=int, default=96, help="training crop and sliding-window edge, voxels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--net", choices=("dynunet", "swinunetr"), default="dynunet")
    p.add_argument("--filters", default="32,64,128,256,320", help="DynUNet filters per level")
    p.add_argument("--feature-size", type=int, default=48, help="SwinUNETR feature_size")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--sw-batch", type=int, default=4, help="sliding-window batch size")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    return p.parse_args()


def write_volumes(folder: str, n: int, size: int, classes: int) -> None:
    """Noisy volumes with a few spheres; the label is which sphere (0 = background)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"))
    for i in range(n):
        image_path, label_path = os.path.join(folder, f"img{i}_{size}.npy"), os.path.join(folder, f"seg{i}_{size}.npy")
        if os.path.exists(image_path) and os.path.exists(label_path):
            continue
        label = np.zeros((size,) * 3, dtype=np.int64)
        for c in range(1, classes):
            centre = rng.uniform(0.25, 0.75, 3) * size
            radius = rng.uniform(0.1, 0.2) * size
            label[((grid - centre[:, None, None, None]) ** 2).sum(0) < radius**2] = c
        image = (label * 0.5 + rng.normal(0, 0.3, label.shape)).astype(np.float32)
        np.save(image_path, image)
        np.save(label_path, label)


class Volumes(Dataset):
    """{"image": 1 x D x H x W float, "label": 1 x D x H x W int64}; training items are random crops."""

    def __init__(self, folder: str, ids: list[int], size: int, roi: int | None) -> None:
        self.folder, self.ids, self.size, self.roi = folder, ids, size, roi

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> dict:
        i = self.ids[k]
        image = np.load(os.path.join(self.folder, f"img{i}_{self.size}.npy"))
        label = np.load(os.path.join(self.folder, f"seg{i}_{self.size}.npy"))
        if self.roi is not None:  # RandSpatialCrop + RandFlip
            start = np.random.randint(0, self.size - self.roi + 1, 3)
            crop = tuple(slice(s, s + self.roi) for s in start)
            image, label = image[crop], label[crop]
            if np.random.rand() < 0.5:
                image, label = image[::-1], label[::-1]
        return {"image": torch.from_numpy(image.copy())[None], "label": torch.from_numpy(label.copy())[None]}


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.net == "swinunetr":
        return SwinUNETR(in_channels=1, out_channels=args.classes, feature_size=args.feature_size)
    filters = [int(f) for f in args.filters.split(",")]
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (len(filters) - 1)
    return DynUNet(spatial_dims=3, in_channels=1, out_channels=args.classes, kernel_size=[[3, 3, 3]] * len(filters),
                   strides=strides, upsample_kernel_size=strides[1:], filters=filters, norm_name="instance")


def validate(model: torch.nn.Module, loader: DataLoader, args: argparse.Namespace, device: torch.device) -> float:
    model.eval()
    dices = []
    with torch.no_grad():
        for batch in loader:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast("cuda", enabled=args.amp):
                logits = sliding_window_inference(images, (args.roi,) * 3, args.sw_batch, model, overlap=0.25)
            pred = logits.argmax(dim=1, keepdim=True)
            for c in range(1, args.classes):
                inter = ((pred == c) & (labels == c)).sum()
                dices.append((2 * inter / ((pred == c).sum() + (labels == c).sum() + 1e-5)).item())
    model.train()
    return sum(dices) / max(len(dices), 1)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    np.random.seed(0)
    write_volumes(args.data_dir, args.volumes, args.size, args.classes)
    n_val = min(2, args.volumes - 1)
    train_ids, val_ids = list(range(args.volumes - n_val)), list(range(args.volumes - n_val, args.volumes))
    train_loader = DataLoader(Volumes(args.data_dir, train_ids, args.size, args.roi), batch_size=args.batch,
                              shuffle=True, num_workers=args.workers, pin_memory=torch.cuda.is_available(),
                              drop_last=True)
    val_loader = DataLoader(Volumes(args.data_dir, val_ids, args.size, None), batch_size=1, num_workers=args.workers)

    model = build_model(args).to(device)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp)
    print(f"{args.net} on {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")

    step, best = 0, -1.0
    while step < args.max_steps:
        bar = tqdm(train_loader, desc=f"step {step}") if tqdm else train_loader
        for batch in bar:
            inputs, labels = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=args.amp):
                outputs = model(inputs)
                loss = loss_function(outputs, labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if tqdm:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            else:
                print(f"step {step} loss {loss.item():.4f}")
            if step % args.val_every == 0:
                metric = validate(model, val_loader, args, device)
                print(f"step {step} mean dice {metric:.4f} (best {best:.4f})")
                if metric > best:
                    best = metric
                    torch.save(model.state_dict(), os.path.join(args.data_dir, "best_metric_model.pth"))
            if step >= args.max_steps:
                break
    if device.type == "cuda":
        print(f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
