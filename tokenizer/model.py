"""VQGAN image tokenizer: config → encoder → quantizer → decoder, and the config.json + safetensors format.

Images are float [B, 3, H, W] in [-1, 1]; codes are int64 [B, H/f, W/f] in raster order.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .contract import CONFIG_FILE, WEIGHTS_FILE, factor_of, unflatten
from .hub import codebook_sha256, resolve_model_dir
from .options import check_fields, from_dict
from .preprocess import ImageSource, prepare_batch
from .quantizer import VectorQuantizer


@dataclass
class TokenizerConfig:
    image_channels: int = 3
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)  # one level per entry; f = 2 ** (len - 1)
    num_res_blocks: int = 1
    attn_lowest: bool = True                      # self-attention at the lowest resolution (encoder and decoder mid)
    latent_channels: int = 64
    codebook_size: int = 1024                     # K
    code_dim: int = 8                             # d: low-dim factorised lookup (LlamaGen)
    normalize_codes: bool = True                  # l2-normalised codes, cosine lookup
    commitment_weight: float = 0.25               # β, on ‖e − sg[q]‖²
    codebook_weight: float = 1.0                  # on ‖sg[e] − q‖² (codebook_update="loss")
    codebook_init: Literal["normal", "uniform"] = "normal"  # "uniform": taming's U(−1/K, 1/K)
    codebook_update: Literal["loss", "ema"] = "loss"
    ema_decay: float = 0.99
    gradient: Literal["rotation", "ste"] = "rotation"
    revive_dead_codes: bool = False
    dead_code_threshold: float = 1e-3
    image_size: int = 256                         # S for the `resize` preprocessing policy
    model_id: str = ""

    def __post_init__(self):
        check_fields(self, "model option")  # types and enums; channel_mult lists become tuples
        if self.image_size % self.factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the factor {self.factor}")

    @property
    def factor(self) -> int:
        return factor_of(self.channel_mult)

    def to_dict(self) -> dict:
        return asdict(self) | {"factor": self.factor}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        """From config.json's dict: unknown keys are an error; `factor` (written by `to_dict`) must agree."""
        return from_dict(cls, d, "model options", derived={"factor": lambda c: c.factor})

    @classmethod
    def llamagen_f16(cls, **kw) -> "TokenizerConfig":
        """LlamaGen's VQ-16 shape (~72M params): a GPU-size model."""
        base = dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, latent_channels=256,
                    codebook_size=16384, code_dim=8)
        return cls(**(base | kw))


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 8 else 1, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a (small) feature map."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each [B, hw, C]
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]         # [B, hw, C]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _mid(ch: int, attn: bool) -> nn.Sequential:
    return nn.Sequential(ResBlock(ch, ch), AttnBlock(ch) if attn else nn.Identity(), ResBlock(ch, ch))


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(cfg.image_channels, chs[0], 3, padding=1)]
        c = chs[0]
        for i, c_out in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, c_out))
                c = c_out
            if i < len(chs) - 1:  # strided conv halves the resolution
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [_mid(c, cfg.attn_lowest), _norm(c), nn.SiLU(), nn.Conv2d(c, cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # [B, 3, H, W] → [B, latent, H/f, W/f]
        return self.net(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult][::-1]
        c = chs[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), _mid(c, cfg.attn_lowest)]
        for i, c_out in enumerate(chs):
            for _ in range(cfg.num_res_blocks + 1):  # one more block per level than the encoder, as in taming
                layers.append(ResBlock(c, c_out))
                c = c_out
            if i < len(chs) - 1:
                layers.append(Upsample(c))
        layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.image_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):  # [B, latent, h, w] → [B, 3, h·f, w·f]
        return self.net(z)


class Tokenizer(nn.Module):
    """encode: image → codes; decode: codes → image; forward: image → (reconstruction, aux losses and stats)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_proj = nn.Conv2d(config.latent_channels, config.code_dim, 1)   # latent → d
        self.quantizer = VectorQuantizer(
            config.codebook_size, config.code_dim, normalize=config.normalize_codes,
            commitment_weight=config.commitment_weight, codebook_weight=config.codebook_weight,
            codebook_init=config.codebook_init, update=config.codebook_update, ema_decay=config.ema_decay,
            gradient=config.gradient, revive_dead_codes=config.revive_dead_codes,
            dead_code_threshold=config.dead_code_threshold,
        )
        self.post_quant_proj = nn.Conv2d(config.code_dim, config.latent_channels, 1)  # d → latent
        self.decoder = Decoder(config)

    @property
    def factor(self) -> int:
        return self.config.factor

    def _check_image(self, x: torch.Tensor) -> None:
        f = self.factor
        if x.dim() != 4 or x.shape[1] != self.config.image_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"expected images [B, {self.config.image_channels}, H, W] with H and W multiples of "
                             f"{f}, got {tuple(x.shape)}; pad or resize with tokenizer.preprocess first")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._check_image(x)
        z_q, codes, aux = self.quantizer(self.quant_proj(self.encoder(x)))
        aux["codes"] = codes
        return self.decoder(self.post_quant_proj(z_q)), aux

    @torch.no_grad()
    def encode(self, x: torch.Tensor | ImageSource | Sequence[ImageSource], policy: str = "resize",
               max_pixels: int | None = None, return_latents: bool = False):
        """Images → int64 codes [B, H/f, W/f] (a tensor on the model's device).

        `x` is a float tensor [B, 3, H, W] in [-1, 1], or what `OnnxTokenizer.encode` takes (paths, PIL images,
        bytes, uint8 arrays, one or a list), preprocessed by the same `tokenizer.preprocess.prepare_batch` with
        `policy` ("resize" | "native") and this model's S and f. `policy`/`max_pixels` apply to the latter only.
        `return_latents` also returns the encoder's continuous output in code space [B, d, h, w] (l2-normalised
        when the model normalises codes), the vectors the nearest-code search compares with the codebook.
        """
        if not isinstance(x, torch.Tensor):
            batch, _ = prepare_batch(x, policy, size=self.config.image_size, factor=self.factor,
                                     max_pixels=max_pixels)
            x = to_model_range(torch.from_numpy(batch)).to(self.device)
        self._check_image(x)
        # Codes are the model's identity: the whole encode path runs in the weights' precision, never under an
        # ambient autocast (a bf16 encoder alone flips ~0.5% of codes, so "fp32 distance" is not enough).
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self.quant_proj(self.encoder(x))                   # [B, d, h, w]
        b, d, h, w = z.shape
        e = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        if self.config.normalize_codes:
            e = F.normalize(e, dim=-1, eps=1e-6)
        codes = self.quantizer.nearest(e).view(b, h, w)
        return (codes, e.view(b, h, w, d).permute(0, 3, 1, 2).contiguous()) if return_latents else codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int codes [B, h, w] in [0, K) → float [B, 3, h·f, w·f] in [-1, 1]."""
        return self.decoder(self.embed(codes, decoder_input=True)).clamp(-1, 1)

    @torch.no_grad()
    def decode_sequence(self, tokens: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Token sequences [B, h·w] in raster order → float images [B, 3, h·f, w·f] in [-1, 1].

        `shape` is the code grid's (h, w); default the model's square grid (S/f, S/f).
        """
        s = self.config.image_size // self.factor
        return self.decode(unflatten(torch.as_tensor(tokens), shape or (s, s)))

    def embed(self, codes: torch.Tensor, decoder_input: bool = False) -> torch.Tensor:
        """int codes [B, h, w] in [0, K) → their codebook vectors [B, d, h, w] (as the decoder sees them), or with
        `decoder_input` the decoder's input latents [B, latent_channels, h, w] (after `post_quant_proj`)."""
        codes = torch.as_tensor(codes, device=self.device)
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, h, w], got shape {tuple(codes.shape)}")
        k = self.config.codebook_size
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must lie in [0, {k}), got [{int(codes.min())}, {int(codes.max())}]")
        z_q = self.quantizer.embed(codes.long())
        return self.post_quant_proj(z_q) if decoder_input else z_q

    @property
    def device(self) -> torch.device:
        """Where the weights are (inputs given as images or numpy codes are moved there)."""
        return self.quantizer.codebook.device

    def codebook_sha256(self) -> str:
        return codebook_sha256(self.quantizer.codebook.detach().float().cpu().numpy())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- config.json + model.safetensors -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE),
                  metadata={"codebook_sha256": self.codebook_sha256(), "format": "vqtok"})
        return directory

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, map_location: str = "cpu") -> "Tokenizer":
        directory = resolve_model_dir(path_or_id)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}; it holds {sorted(p.name for p in directory.iterdir())}")
        config = TokenizerConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(weights), device=map_location))
        return model.eval()


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] → float [B, 3, H, W] in [-1, 1]: the one place the torch side scales pixels."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] → uint8 [B, H, W, 3], rounded."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
