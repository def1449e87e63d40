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
    attn_lowest: bool = True                      # self-attention in the encoder and decoder mid blocks
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
    # Architecture options that imported tokenizers need (taming, LlamaGen, diffusers: docs/IMPORT.md). The
    # defaults are vqtok's own architecture, so configs written before these fields existed load unchanged.
    norm_groups: int = 0                          # GroupNorm groups; 0: min(32, C // 4) (vqtok); the others use 32
    stem_channels: int = 0                        # encoder conv_in width; 0: level 0's width (taming/LlamaGen: ch)
    attn_levels: tuple[int, ...] = ()             # levels (0 = full resolution) with attention after each res block
    decoder_attn_levels: tuple[int, ...] | None = None  # None: same as attn_levels
    decoder_channel_mult: tuple[int, ...] = ()    # per level, in encoder order; (): channel_mult
    decoder_num_res_blocks: int = 0               # res blocks per decoder level; 0: num_res_blocks + 1
    downsample_padding: Literal["symmetric", "asymmetric"] = "symmetric"  # asymmetric: pad right/bottom (taming)
    origin: str = ""                              # where imported weights came from (empty: trained by vqtok)

    def __post_init__(self):
        check_fields(self, "model option")  # types and enums; channel_mult lists become tuples
        n = len(self.channel_mult)
        if self.decoder_channel_mult and len(self.decoder_channel_mult) != n:
            raise ValueError(f"decoder_channel_mult {self.decoder_channel_mult} needs {n} levels like channel_mult")
        for name in ("attn_levels", "decoder_attn_levels"):
            bad = [i for i in getattr(self, name) or () if not 0 <= i < n]
            if bad:
                raise ValueError(f"{name} {bad} out of range: levels are 0..{n - 1}")
        if self.image_size % self.factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the factor {self.factor}")

    @property
    def factor(self) -> int:
        return factor_of(self.channel_mult)

    # The resolved architecture (defaults filled in), used by Encoder/Decoder and by tokenizer.layouts.
    def encoder_widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    def decoder_widths(self) -> list[int]:
        """Per level in encoder order (level 0 = full resolution); the decoder runs them last to first."""
        return [self.base_channels * m for m in (self.decoder_channel_mult or self.channel_mult)]

    def decoder_blocks(self) -> int:
        return self.decoder_num_res_blocks or self.num_res_blocks + 1

    def decoder_attn(self) -> tuple[int, ...]:
        return self.attn_levels if self.decoder_attn_levels is None else self.decoder_attn_levels

    def to_dict(self) -> dict:
        return asdict(self) | {"factor": self.factor}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        """From config.json's dict: unknown keys are an error; `factor` (written by `to_dict`) must agree."""
        return from_dict(cls, d, "model options", derived={"factor": lambda c: c.factor})

    @classmethod
    def llamagen_f16(cls, **kw) -> "TokenizerConfig":
        """LlamaGen VQ-16's channel layout (~72M params) in vqtok's own architecture (for training); the exact
        LlamaGen architecture is `tokenizer.importers.preset_config("llamagen-vq16")`."""
        base = dict(base_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, latent_channels=256,
                    codebook_size=16384, code_dim=8)
        return cls(**(base | kw))


def _norm(ch: int, groups: int = 0) -> nn.GroupNorm:
    if not groups:  # vqtok's own rule, kept for the models trained with it
        groups = min(32, ch // 4) if ch >= 8 else 1
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int = 0):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a (small) feature map, scores scaled by C^-1/2."""

    def __init__(self, ch: int, groups: int = 0):
        super().__init__()
        self.norm, self.qkv, self.proj = _norm(ch, groups), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # each [B, hw, C]
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]         # [B, hw, C]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class AsymmetricDownsample(nn.Conv2d):
    """Zero-pad right and bottom by one, then a 3×3 stride-2 conv (taming, LlamaGen, diffusers). A Conv2d
    subclass, so its weights sit at the same keys as vqtok's symmetric strided conv."""

    def __init__(self, ch: int):
        super().__init__(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def _mid(ch: int, attn: bool, groups: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(ch, ch, groups), AttnBlock(ch, groups) if attn else nn.Identity(),
                         ResBlock(ch, ch, groups))


# `plan` has one entry per module of `net`, naming its role: ("conv_in",), ("res", level, block),
# ("attn", level, block), ("down", level), ("up", level), ("mid",), ("norm_out",), ("act",), ("conv_out",).
# tokenizer.layouts maps these roles to the key names of the code bases vqtok imports from.
class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        chs, g = cfg.encoder_widths(), cfg.norm_groups
        c = cfg.stem_channels or chs[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.image_channels, c, 3, padding=1)]
        plan: list[tuple] = [("conv_in",)]
        for i, c_out in enumerate(chs):
            for j in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, c_out, g))
                plan.append(("res", i, j))
                c = c_out
                if i in cfg.attn_levels:
                    layers.append(AttnBlock(c, g))
                    plan.append(("attn", i, j))
            if i < len(chs) - 1:  # strided conv halves the resolution
                layers.append(AsymmetricDownsample(c) if cfg.downsample_padding == "asymmetric"
                              else nn.Conv2d(c, c, 3, stride=2, padding=1))
                plan.append(("down", i))
        layers += [_mid(c, cfg.attn_lowest, g), _norm(c, g), nn.SiLU(), nn.Conv2d(c, cfg.latent_channels, 3, padding=1)]
        plan += [("mid",), ("norm_out",), ("act",), ("conv_out",)]
        self.net, self.plan = nn.Sequential(*layers), plan

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
        chs, g = cfg.decoder_widths(), cfg.norm_groups
        c = chs[-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c, 3, padding=1), _mid(c, cfg.attn_lowest, g)]
        plan: list[tuple] = [("conv_in",), ("mid",)]
        for i in reversed(range(len(chs))):  # lowest resolution first
            for j in range(cfg.decoder_blocks()):
                layers.append(ResBlock(c, chs[i], g))
                plan.append(("res", i, j))
                c = chs[i]
                if i in cfg.decoder_attn():
                    layers.append(AttnBlock(c, g))
                    plan.append(("attn", i, j))
            if i > 0:
                layers.append(Upsample(c))
                plan.append(("up", i))
        layers += [_norm(c, g), nn.SiLU(), nn.Conv2d(c, cfg.image_channels, 3, padding=1)]
        plan += [("norm_out",), ("act",), ("conv_out",)]
        self.net, self.plan = nn.Sequential(*layers), plan

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
        b, h, w = x.shape[0], x.shape[2] // self.factor, x.shape[3] // self.factor
        e = self.search_vectors(x)                                   # [B·h·w, d]
        codes = self.quantizer.nearest(e).view(b, h, w)
        return (codes, e.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()) if return_latents else codes

    def search_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] → the fp32 vectors [B·h·w, d] (raster order) that the nearest-code search sees.

        The one encode → normalise path (eval and export use it too). Codes are the model's identity: it runs
        in the weights' precision, never under an ambient autocast (a bf16 encoder alone flips ~0.5 % of codes,
        so an fp32 distance is not enough)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = self.quant_proj(self.encoder(x))                   # [B, d, h, w]
        return self.quantizer.search_input(z)

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
