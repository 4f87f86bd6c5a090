"""MONAI SegResNet, trained with MONAI's GeneralizedDiceLoss (MONAI's BraTS tutorial network (4 modalities, 3 regions)).

    vramplan profile --step examples/zoo/monai_segresnet.py
    full size (benchmarks/bench_zoo.py --full): --knob init_filters=16 --knob blocks_down=1,2,2,4 --knob roi=224,224,144 --batch 1
"""

from _zoo import adamw as optimizers, segmentation_batch, supervised

MODEL = "SegResNet"
FULL = {'init_filters': 16, 'blocks_down': (1, 2, 2, 4), 'roi': (224, 224, 144)}
FULL_BATCH = 1


def networks(init_filters: int = 8, blocks_down: tuple = (1, 1, 1)):
    from monai.networks.nets import SegResNet

    return {"model": SegResNet(spatial_dims=3, in_channels=4, out_channels=3, init_filters=init_filters, blocks_down=tuple(blocks_down),
                             blocks_up=(1,) * (len(blocks_down) - 1), dropout_prob=0.2)}


def batch(batch_size: int = 1, roi: tuple = (16, 16, 16)):
    return segmentation_batch(batch_size, roi, classes=3, in_channels=4)


def step(nets, opts, batch, vp):
    from monai.losses import GeneralizedDiceLoss

    supervised(nets, opts, batch, vp, GeneralizedDiceLoss(to_onehot_y=True, softmax=True))
