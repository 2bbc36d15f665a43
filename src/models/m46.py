"""m46: the VGG-like network of Iglovikov, Rakhlin, Kalinin & Shvets (DLMIA 2018), trained from scratch.

Six blocks of widths 32, 64, 128, 128, 256, 384; each block is

    conv3x3 -> ELU -> BN -> conv1x1 -> ELU -> BN -> maxpool 3x3 / 2 (padding 1)

then global average pooling to a 384-d vector. Every conv keeps the spatial size and each pool
maps n -> ceil(n / 2), so any input size works (32 px ends at 1x1; the paper's ~512 px at 8x8).

This is only the backbone: `BoneAgeNet` adds the sex branch and the dense head. The paper's head
(dropout, dense 2048, ELU, dropout, dense 2048, ELU, output) is `model.head_hidden: [2048, 2048]`
with `model.drop_rate` (dropout on the pooled features) and `model.head_dropout`; `build_model`
reads `head_activation` below and gives the head ELUs.
"""

from __future__ import annotations

import torch
from torch import nn

M46_WIDTHS = (32, 64, 128, 128, 256, 384)


class M46Block(nn.Sequential):
    def __init__(self, in_chans: int, width: int):
        super().__init__(
            nn.Conv2d(in_chans, width, kernel_size=3, padding=1),
            nn.ELU(inplace=True),
            nn.BatchNorm2d(width),
            nn.Conv2d(width, width, kernel_size=1),
            nn.ELU(inplace=True),
            nn.BatchNorm2d(width),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )


class M46(nn.Module):
    """`forward(image) -> (N, num_features)` pooled features, like a timm model with num_classes=0."""

    head_activation = "elu"  # the dense head that goes with it (read by build_model)
    first_conv = "blocks.0.0"  # the stem conv, whose weights depend on in_chans

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = M46_WIDTHS, drop_rate: float = 0.0):
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, not {in_chans}")
        blocks, chans = [], in_chans
        for width in widths:
            blocks.append(M46Block(chans, width))
            chans = width
        self.in_chans = in_chans
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Like timm's drop_rate with num_classes=0: dropout on the pooled features (the paper's
        # dropout before the first dense layer; the sex input is concatenated after it).
        self.drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.num_features = chans

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.blocks(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.flatten(self.pool(self.forward_features(image)), 1))
