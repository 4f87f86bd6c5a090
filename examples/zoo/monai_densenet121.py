"""MONAI DenseNet121 in 3D, a volume classifier trained with cross-entropy as in MONAI's
3D classification tutorial. The small size keeps two layers per dense block; the full size has
DenseNet-121's (6, 12, 24, 16), the library's default.

    vramplan profile --step examples/zoo/monai_densenet121.py
    full size (benchmarks/bench_zoo.py --full): --knob init_features=64 --knob growth_rate=32 --knob block_config=6,12,24,16 --knob roi=96,96,96 --batch 2
"""

from _zoo import adamw as optimizers, classification_batch, classify

MODEL = "DenseNet121"
FULL = {"init_features": 64, "growth_rate": 32, "block_config": (6, 12, 24, 16), "roi": (96, 96, 96)}
FULL_BATCH = 2


def networks(init_features: int = 8, growth_rate: int = 4, block_config: tuple = (2, 2, 2, 2)):
    from monai.networks.nets import DenseNet121

    return {"model": DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=init_features,
                                 growth_rate=growth_rate, block_config=tuple(block_config))}


def batch(batch_size: int = 2, roi: tuple = (32, 32, 32)):
    return classification_batch(batch_size, roi)


def step(nets, opts, batch, vp):
    classify(nets, opts, batch, vp)
