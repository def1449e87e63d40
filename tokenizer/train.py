"""VQGAN training: reconstruction (+ optional CIELAB L1) + perceptual + PatchGAN (hinge, adaptive weight) +
codebook/commitment losses.

One process, or several under torchrun (DDP; gloo on CPU, nccl on GPU). Rank 0 writes, into `out/`:
config.json + model.safetensors (loadable by `Tokenizer.from_pretrained`), train_state.pt (optimisers, scheduler,
step, RNG, raw weights; tensors only, loaded with weights_only=True), train_config.json, metrics.jsonl and
grids/step_XXXXXX.png (input | reconstruction) and training.png (loss, codebook usage and perplexity,
quantisation error and learning-rate curves; redrawn at every checkpoint and at the end). `resume=True` continues exactly where the state left off.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data import CropDataset, ResumableSampler, collate_skip_none, list_images
from .losses import PatchDiscriminator, adaptive_weight, d_hinge_loss, g_hinge_loss, lab_l1
from .model import Tokenizer, TokenizerConfig, to_uint8
from .options import check_fields, from_dict
from .perceptual import make_perceptual
from .preprocess import save_grid

log = logging.getLogger("vqtok.train")


@dataclass
class TrainConfig:
    data: str = ""
    split: str | None = "train"         # used when `data` is a manifest (or a folder holding manifest.tsv)
    out: str = "runs/vqtok"
    model: dict = field(default_factory=dict)  # TokenizerConfig fields
    steps: int = 2000
    batch_size: int = 16                # per rank
    crop: int = 128
    scale: tuple[float, float] = (1.0, 2.0)  # shorter side = crop × U(scale) before the random crop
    flip: bool = True
    hue: float = 0.0                    # probability of a random hue rotation per crop (data.CropDataset)
    saturation: tuple[float, float] = (1.0, 1.0)  # HSV saturation scaled by U(lo, hi)
    patches: float = 0.0                # probability of flat random-colour rectangles on a crop (data.paint_patches)
    patch_grey: float = 0.0             # probability that such a rectangle is neutral grey (data.paint_patches)
    init: str | None = None             # fine-tune: start from this model folder or id (same architecture)
    # "decoder": train only post_quant_proj + decoder; encoder, quant_proj and codebook stay frozen (eval mode: no
    # revival, no codebook EMA), so every image keeps its codes — the token contract holds bit for bit and token
    # datasets made with the init model stay valid. Needs `init`.
    trainable: Literal["all", "decoder"] = "all"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    recon: Literal["l1", "l2"] = "l1"
    recon_weight: float = 1.0
    perceptual: Literal["effnet", "lpips", "none"] = "effnet"
    perceptual_weight: float = 0.1
    colour_weight: float = 0.0          # L1 in CIELAB (losses.lab_l1) on top of `recon`; 0: off
    disc_start: int = 10**9             # step at which the GAN loss switches on
    disc_weight: float = 0.1
    disc_lr: float = 1e-4
    ema: bool = False                   # EMA of weights; saved model.safetensors holds the EMA weights
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    log_every: int = 10
    grid_every: int = 250
    workers: int = 1
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0                    # torch intra-op threads on CPU (0: torch's default)
    # bf16 autocast (the quantizer stays fp32). "auto": on CUDA only. "bf16" also on CPU, where it pays on CPUs with
    # AMX / AVX512-BF16 (2.2× faster steps on the AMX dev VM: docs/PERFORMANCE.md, `python -m bench.training --autocast`)
    autocast: Literal["auto", "bf16", "off"] = "auto"
    progress: bool = True

    def __post_init__(self):
        check_fields(self, "training option")  # types and enums: `--set lr="abc"` stops here, not in AdamW
        TokenizerConfig.from_dict(self.model)  # the model options too, before any data is read
        if not (math.isfinite(self.colour_weight) and self.colour_weight >= 0):  # NaN/inf would poison every step
            raise ValueError(f"colour_weight must be a finite number >= 0 (0 turns the CIELAB loss off), "
                             f"got {self.colour_weight}")
        for name in ("hue", "patches", "patch_grey"):  # probabilities: outside [0, 1] is a typo, not a recipe
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability: give a number in [0, 1], got {getattr(self, name)}")
        if self.trainable == "decoder" and not self.init:
            raise ValueError('trainable="decoder" fine-tunes the decoder of a trained model: set init to its '
                             'folder or id (a frozen random encoder would make codes no one wants)')

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a --config file / CLI overrides: unknown keys, wrong types and values outside an enum are errors."""
        return from_dict(cls, d, "training options")


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _rng_state() -> dict:
    """Only torch's generators matter: data order and augmentation are seeded per sample (see data.py)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def _save_grid(real: torch.Tensor, recon: torch.Tensor, path: Path, n: int = 4) -> None:
    """rows of (input | reconstruction) of the last batch, by `preprocess.save_grid`."""
    real_u8, recon_u8 = to_uint8(real[:n]).cpu().numpy(), to_uint8(recon[:n].detach().float()).cpu().numpy()
    save_grid(list(zip(real_u8, recon_u8)), path)


# Model options that change only how training updates the weights; fine-tuning (`init`) may set them. Every other
# option is architecture and comes from the init model (an imported LlamaGen/taming/diffusers one included).
TRAINING_ONLY = ("gradient", "commitment_weight", "codebook_weight", "codebook_init", "revive_dead_codes",
                 "dead_code_threshold", "ema_decay", "model_id", "image_size")


def _init_config(init: TokenizerConfig, overrides: dict, name: str) -> dict:
    """Fine-tuning: the init model's config, with the training-only options of `overrides` applied."""
    base = init.to_dict()
    base.pop("factor")
    changed = [k for k, v in overrides.items() if k not in TRAINING_ONLY and k in base
               and TokenizerConfig.from_dict(base | {k: v}).to_dict()[k] != base[k]]
    if changed:
        raise ValueError(f"init={name}: {changed} would change the architecture of the init model; fine-tuning "
                         f"may set only {', '.join(TRAINING_ONLY)}")
    return base | overrides


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.ddp and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out)

        torch.manual_seed(cfg.seed)  # same init on every rank and for both arms of a matched pair
        init = Tokenizer.from_pretrained(cfg.init) if cfg.init else None
        model_cfg = _init_config(init.config, cfg.model, cfg.init) if init is not None else cfg.model
        self.model = Tokenizer(TokenizerConfig.from_dict(model_cfg)).to(self.device)
        if init is not None:
            self.model.load_state_dict(init.state_dict())
        self.disc = PatchDiscriminator().to(self.device)
        self.perceptual = make_perceptual(cfg.perceptual).to(self.device) if cfg.perceptual != "none" else None
        self.frozen = [self.model.encoder, self.model.quant_proj, self.model.quantizer] \
            if cfg.trainable == "decoder" else []
        for m in self.frozen:
            m.requires_grad_(False)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema else None
        trained = [p for p in self.model.parameters() if p.requires_grad]  # AdamW's weight decay must skip frozen ones
        self.opt = torch.optim.AdamW(trained, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
        self.step = 0
        if self.ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model_ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self.disc_ddp = torch.nn.parallel.DistributedDataParallel(self.disc, device_ids=ids)
        else:
            self.model_ddp, self.disc_ddp = self.model, self.disc
        bf16 = cfg.autocast == "bf16" or (cfg.autocast == "auto" and self.device.type == "cuda")
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16)

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "disc": self.disc.state_dict(), "opt": self.opt.state_dict(),
                "opt_d": self.opt_d.state_dict(), "step": torch.tensor(self.step), "rng": _rng_state(),
                "ema": self.ema.state_dict() if self.ema is not None else {},
                # Not in the model's state_dict (non-persistent), but dead-code revival decides on it.
                "quantizer_usage": self.model.quantizer.usage_ema.detach().clone()}

    def load_state(self, path: Path) -> None:
        s = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(s["model"])
        self.disc.load_state_dict(s["disc"])
        self.opt.load_state_dict(s["opt"])
        self.opt_d.load_state_dict(s["opt_d"])
        if self.ema is not None and s["ema"]:
            self.ema.load_state_dict(s["ema"])
        if "quantizer_usage" in s:
            self.model.quantizer.usage_ema.copy_(s["quantizer_usage"])
        self.step = int(s["step"])
        _set_rng_state({k: v.cpu() for k, v in s["rng"].items()})

    def save(self) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.ema or self.model).save_pretrained(self.out)
        tmp = self.out / "train_state.pt.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.out / "train_state.pt")  # a kill mid-write never leaves a torn state
        if (self.out / "metrics.jsonl").is_file():
            from .plots import plot_training

            plot_training(self.out / "metrics.jsonl", self.out / "training.png")

    # -- one optimisation step -------------------------------------------------------------------------------------
    def train_step(self, batch_u8: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        x = batch_u8.to(self.device, non_blocking=True).float() / 127.5 - 1.0  # [B, 3, crop, crop]
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(self.step, cfg)
        use_gan = self.step >= cfg.disc_start and cfg.disc_weight > 0

        self.model.train()
        for m in self.frozen:
            m.eval()  # no dead-code revival or codebook EMA: the codes must not move
        with torch.autocast(**self.autocast):
            recon, aux = self.model_ddp(x)
            recon = recon.float()
            rec = (recon - x).abs().mean() if cfg.recon == "l1" else F.mse_loss(recon, x)
            nll = cfg.recon_weight * rec
            p_loss = torch.zeros((), device=self.device)
            if self.perceptual is not None:
                p_loss = self.perceptual(recon, x).mean()
                nll = nll + cfg.perceptual_weight * p_loss
            lab = torch.zeros((), device=self.device)
            if cfg.colour_weight > 0:
                lab = lab_l1(recon, x)
                nll = nll + cfg.colour_weight * lab
            g_loss = torch.zeros((), device=self.device)
            d_w = torch.zeros((), device=self.device)
            if use_gan:
                g_loss = g_hinge_loss(self.disc_ddp(recon))
                d_w = cfg.disc_weight * adaptive_weight(nll, g_loss, self.model.decoder.net[-1].weight)
            loss = nll + d_w * g_loss + aux["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], cfg.grad_clip)
        self.opt.step()

        d_loss = torch.zeros(())
        if use_gan:
            with torch.autocast(**self.autocast):
                d_loss = d_hinge_loss(self.disc_ddp(x), self.disc_ddp(recon.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        if self.ema is not None:
            with torch.no_grad():
                for pe, pm in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
                    pe.lerp_(pm, 1 - cfg.ema_decay) if pe.dtype.is_floating_point else pe.copy_(pm)
        self.step += 1
        self._last = (x, recon)
        return {"loss": loss.item(), "rec": rec.item(), "perceptual": p_loss.item(), "lab": lab.item(), "g_loss": g_loss.item(),
                "d_loss": d_loss.item(), "disc_weight": float(d_w), "commit_codebook": aux["loss"].item(),
                "usage": aux["usage"].item(), "perplexity": aux["perplexity"].item(),
                "quant_error": aux["quant_error"].item(), "e_sq": aux["e_sq"].item(), "grad_norm": float(gnorm),
                "lr": self.opt.param_groups[0]["lr"]}

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        paths = list_images(cfg.data, cfg.split)
        dataset = CropDataset(paths, cfg.crop, cfg.scale, cfg.flip, cfg.hue, cfg.saturation, cfg.patches,
                             cfg.patch_grey)
        sampler = ResumableSampler(len(dataset), cfg.seed, self.step * cfg.batch_size * self.world, self.rank, self.world)
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                                             collate_fn=collate_skip_none, persistent_workers=cfg.workers > 0,
                                             pin_memory=self.device.type == "cuda",
                                             # Its own generator: creating the iterator must not consume the
                                             # global torch RNG that training (dead-code revival) draws from,
                                             # or a resumed run diverges from an uninterrupted one.
                                             generator=torch.Generator().manual_seed(cfg.seed))
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        metrics_file = (self.out / "metrics.jsonl").open("a") if self.rank == 0 else None
        t0, seen, last = time.time(), 0, {}
        for batch in loader:
            if self.step >= cfg.steps:
                break
            last = self.train_step(batch)
            seen += batch.shape[0] * self.world
            if self.rank == 0:
                rate = seen / (time.time() - t0)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    metrics_file.write(json.dumps({"step": self.step, **last, "images_per_s": rate,
                                                   "time": time.time()}) + "\n")
                    metrics_file.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.3f}", usage=f"{last['usage']:.2f}", img_s=f"{rate:.1f}")
                if cfg.grid_every and self.step % cfg.grid_every == 0:
                    _save_grid(*self._last, self.out / "grids" / f"step_{self.step:06d}.png")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()
        result = {"step": self.step, **last, "wall_s": time.time() - t0}
        if self.ddp:
            result["ranks_in_sync"] = self._ranks_in_sync()
        return result

    def _ranks_in_sync(self) -> bool:
        """True when every rank holds bit-identical model weights (DDP must keep them so)."""
        flat = torch.cat([p.detach().flatten().double().cpu() for p in self.model.state_dict().values()])
        mine = torch.stack([flat.sum(), (flat * torch.arange(flat.numel(), dtype=torch.float64)).sum()])
        gathered = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine.to(self.device) if self.device.type == "cuda" else mine)
        return all(torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    trainer = Trainer(cfg)
    state = Path(cfg.out) / "train_state.pt"
    if resume:
        if not state.is_file():
            raise FileNotFoundError(f"--resume: no {state}; start without --resume or point --out at a previous run")
        trainer.load_state(state)
    result = trainer.fit()
    if trainer.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return result
