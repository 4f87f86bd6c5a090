"""MONAI HighResNet, trained with MONAI's TverskyLoss (width 16: the library's default layer_params).

    vramplan profile --step examples/zoo/monai_highresnet.py
    full size (benchmarks/bench_zoo.py --full): --knob width=16 --knob roi=96,96,96 --batch 1
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "HighResNet"
FULL = {'width': 16, 'roi': (96, 96, 96)}
FULL_BATCH = 1


def networks(width: int = 4):
    from monai.networks.nets import HighResNet

    return {"model": HighResNet(spatial_dims=3, in_channels=1, out_channels=2, layer_params=_layers(width))}


def _layers(width):
    """HighResNet's default layer_params (16, 16, 32, 64 features, 80 before the classifier) scaled by width/16."""
    w = width
    return ({"name": "conv_0", "n_features": w, "kernel_size": 3},
            {"name": "res_1", "n_features": w, "kernels": (3, 3), "repeat": 3},
            {"name": "res_2", "n_features": 2 * w, "kernels": (3, 3), "repeat": 3},
            {"name": "res_3", "n_features": 4 * w, "kernels": (3, 3), "repeat": 3},
            {"name": "conv_1", "n_features": 5 * w, "kernel_size": 1},
            {"name": "conv_2", "kernel_size": 1})


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return segmentation_batch(batch_size, roi, classes=2, in_channels=1)


def step(nets, opts, batch, vp):
    from monai.losses import TverskyLoss

    supervised(nets, opts, batch, vp, TverskyLoss(to_onehot_y=True, softmax=True))
