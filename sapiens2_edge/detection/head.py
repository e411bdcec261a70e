"""RTMDetSepBNHead: per level, ``stacked_convs`` 3 x 3 ConvModules for classification and as many
for regression, then 1 x 1 ``rtm_cls`` / ``rtm_reg`` convs (with bias). The 3 x 3 convs are shared
across levels (``share_conv``), their BatchNorms are not. Outputs per level: class logits
(B, num_classes, H, W) and box distances (left, top, right, bottom) in input pixels
(B, 4, H, W): the regression times the level's stride (exp'd first when ``exp_on_reg``)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvModule
from .config import RTMDetConfig


class RTMDetSepBNHead(nn.Module):
    def __init__(self, cfg: RTMDetConfig) -> None:
        super().__init__()
        self.strides = tuple(cfg.strides)
        self.exp_on_reg = cfg.exp_on_reg
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.rtm_cls = nn.ModuleList()
        self.rtm_reg = nn.ModuleList()
        for _ in self.strides:
            chans = [cfg.neck_out_channels] + [cfg.feat_channels] * cfg.stacked_convs
            self.cls_convs.append(nn.ModuleList(ConvModule(cfg, a, b, 3) for a, b in zip(chans, chans[1:], strict=False)))
            self.reg_convs.append(nn.ModuleList(ConvModule(cfg, a, b, 3) for a, b in zip(chans, chans[1:], strict=False)))
            self.rtm_cls.append(nn.Conv2d(cfg.feat_channels, cfg.num_classes, 1))
            self.rtm_reg.append(nn.Conv2d(cfg.feat_channels, 4, 1))
        for level in range(1, len(self.strides)):  # share the conv weights, keep the BNs separate
            for i in range(cfg.stacked_convs):
                self.cls_convs[level][i].conv = self.cls_convs[0][i].conv
                self.reg_convs[level][i].conv = self.reg_convs[0][i].conv

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        cls_scores, bbox_preds = [], []
        for level, (x, stride) in enumerate(zip(feats, self.strides, strict=True)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_convs[level]:
                cls_feat = layer(cls_feat)
            for layer in self.reg_convs[level]:
                reg_feat = layer(reg_feat)
            reg = self.rtm_reg[level](reg_feat)
            if self.exp_on_reg:
                reg = reg.exp()
            cls_scores.append(self.rtm_cls[level](cls_feat))
            bbox_preds.append(reg * stride)
        return tuple(cls_scores), tuple(bbox_preds)


def shared_conv_keys(cfg: RTMDetConfig) -> dict[str, str]:
    """The checkpoint keys of the shared head convs of levels 1.. -> the level-0 key they copy."""
    return {f"bbox_head.{branch}.{level}.{i}.conv.weight": f"bbox_head.{branch}.0.{i}.conv.weight"
            for branch in ("cls_convs", "reg_convs") for level in range(1, len(cfg.strides))
            for i in range(cfg.stacked_convs)}


__all__ = ["RTMDetSepBNHead", "shared_conv_keys"]
