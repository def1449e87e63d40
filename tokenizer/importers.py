"""`vqtok import`: LlamaGen, taming-transformers (and LDM VQ) and diffusers VQ checkpoints → vqtok's format.

Each source's config becomes a `TokenizerConfig` describing its architecture exactly (docs/IMPORT.md lists the
correspondences); `tokenizer.layouts` renames the tensors; `tokenizer.safe_load` reads `.pt`/`.ckpt` files
without running pickled code. The output folder is what `Tokenizer.from_pretrained`, `vqtok export`,
`vqtok serve` and `vqtok tokenize` read: config.json, model.safetensors and a model card stub (README.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .contract import CONFIG_FILE as DIFFUSERS_CONFIG  # diffusers names its config file as vqtok does
from .hub import file_sha256
from .layouts import from_source
from .model import Tokenizer, TokenizerConfig
from .safe_load import load_checkpoint

FORMATS = ("llamagen", "taming", "diffusers")

# LlamaGen's released tokenizers: ModelArgs defaults (K = 16384, d = 8, l2-normalised, z = 256) with the
# Encoder/Decoder defaults ch = 128, num_res_blocks = 2 (VQModel never passes those two).
LLAMAGEN_PRESETS = {
    "VQ-16": {"encoder_ch_mult": [1, 1, 2, 2, 4], "decoder_ch_mult": [1, 1, 2, 2, 4]},
    "VQ-8": {"encoder_ch_mult": [1, 2, 2, 4], "decoder_ch_mult": [1, 2, 2, 4]},
}
LLAMAGEN_DEFAULTS = {"codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True, "z_channels": 256,
                     "ch": 128, "num_res_blocks": 2}
# taming-style `model.params` of released models (the YAML files shipped with them).
TAMING_PRESETS = {
    "taming-f16-16384": {"embed_dim": 256, "n_embed": 16384, "ddconfig": {
        "double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}},
    "ldm-vq-f4": {"embed_dim": 3, "n_embed": 8192, "ddconfig": {
        "double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}},
}
PRESETS = {"llamagen-vq16": ("llamagen", "VQ-16"), "llamagen-vq8": ("llamagen", "VQ-8"),
           "taming-f16-16384": ("taming", "taming-f16-16384"), "ldm-vq-f4": ("taming", "ldm-vq-f4")}

# Top-level checkpoint entries that are training state, never weights of the tokenizer.
_TRAINING_ENTRIES = ("optimizer", "discriminator", "optimizer_disc", "optimizer_states", "lr_schedulers", "steps",
                     "args", "epoch", "global_step", "pytorch-lightning_version", "callbacks", "hparams",
                     "hyper_parameters", "loops", "state_dict_ema", "model_ema")
# Prefixes of model state-dict entries that belong to the training loss (taming puts its LPIPS + discriminator
# under `loss.`), dropped and counted.
_LOSS_PREFIXES = ("loss.", "discriminator.", "perceptual_loss.")


# taming's (and diffusers') legacy VectorQuantizer2: β weighs the codebook term, the commitment term has weight 1,
# the codebook starts U(−1/K, 1/K). Only fine-tuning (`vqtok train --init`) uses these.
_TAMING_LOSS = dict(commitment_weight=1.0, codebook_init="uniform")


# -- configs ---------------------------------------------------------------------------------------------------
def llamagen_config(args: dict) -> TokenizerConfig:
    """LlamaGen `ModelArgs` fields plus `ch` and `num_res_blocks` (the fixtures' model_args.json) → config."""
    a = LLAMAGEN_DEFAULTS | args
    enc = list(a.get("encoder_ch_mult", [1, 1, 2, 2, 4]))
    dec = list(a.get("decoder_ch_mult", enc))
    if len(dec) != len(enc):
        raise ValueError(f"encoder_ch_mult {enc} and decoder_ch_mult {dec} differ in length; vqtok needs the "
                         "decoder to undo the encoder's factor")
    n = len(enc)
    return TokenizerConfig(
        base_channels=a["ch"], stem_channels=a["ch"], channel_mult=enc, decoder_channel_mult=dec,
        num_res_blocks=a["num_res_blocks"], decoder_num_res_blocks=a["num_res_blocks"] + 1,
        attn_levels=(n - 1,), decoder_attn_levels=(n - 1,), attn_lowest=True, norm_groups=32,
        downsample_padding="asymmetric", latent_channels=a["z_channels"], codebook_size=a["codebook_size"],
        code_dim=a["codebook_embed_dim"], normalize_codes=bool(a["codebook_l2_norm"]),
        commitment_weight=float(a.get("commit_loss_beta", 0.25)), image_size=int(a.get("image_size", 256)))


def taming_config(params: dict) -> TokenizerConfig:
    """taming/LDM `model.params` (embed_dim, n_embed, ddconfig) → config."""
    dd = params["ddconfig"]
    for key, want in (("double_z", False), ("in_channels", 3), ("out_ch", 3)):
        if dd.get(key, want) != want:
            raise ValueError(f"ddconfig.{key} = {dd[key]!r} is not supported (vqtok needs {want!r})")
    if dd.get("attn_type", "vanilla") != "vanilla":
        raise ValueError(f"ddconfig.attn_type {dd['attn_type']!r} is not supported; only 'vanilla' attention")
    if params.get("remap") or params.get("sane_index_shape", False) not in (False, True):
        raise ValueError("remapped codebooks (model.params.remap) are not supported")
    n, res = len(dd["ch_mult"]), int(dd["resolution"])
    # taming places attention where the *config* resolution, halved per level, is in attn_resolutions.
    attn = tuple(i for i in range(n) if res // 2**i in set(dd.get("attn_resolutions", [])))
    return TokenizerConfig(
        base_channels=dd["ch"], stem_channels=dd["ch"], channel_mult=dd["ch_mult"], num_res_blocks=dd["num_res_blocks"],
        decoder_num_res_blocks=dd["num_res_blocks"] + 1, attn_levels=attn, attn_lowest=True, norm_groups=32,
        downsample_padding="asymmetric", latent_channels=dd["z_channels"], codebook_size=params["n_embed"],
        code_dim=params["embed_dim"], normalize_codes=False, image_size=res, **_TAMING_LOSS,
        codebook_weight=float(params.get("beta", 0.25)))


def diffusers_config(cfg: dict) -> TokenizerConfig:
    """diffusers `VQModel` config.json → config."""
    if cfg.get("_class_name", "VQModel") != "VQModel":
        raise ValueError(f"a diffusers {cfg['_class_name']} is not a VQModel; vqtok imports VQModel folders")
    if cfg.get("norm_type", "group") != "group":
        raise ValueError(f"norm_type {cfg['norm_type']!r} (MoVQ's spatial norm) is not supported; only 'group'")
    if cfg.get("act_fn", "silu") != "silu" or cfg.get("in_channels", 3) != 3 or cfg.get("out_channels", 3) != 3:
        raise ValueError("only act_fn 'silu' with 3 input and output channels is supported")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    ok_down, ok_up = {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"}, {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"}
    if set(down) - ok_down or set(up) - ok_up or len(down) != len(up):
        raise ValueError(f"block types {down} / {up} are not supported; vqtok imports {sorted(ok_down)} and "
                         f"{sorted(ok_up)}, as many up blocks as down blocks")
    widths = list(cfg["block_out_channels"])
    base = widths[0]
    if any(w % base for w in widths):
        raise ValueError(f"block_out_channels {widths}: vqtok needs every width to be a multiple of the first")
    n = len(widths)
    return TokenizerConfig(
        base_channels=base, channel_mult=[w // base for w in widths], num_res_blocks=cfg.get("layers_per_block", 1),
        decoder_num_res_blocks=cfg.get("layers_per_block", 1) + 1,
        attn_levels=tuple(i for i, t in enumerate(down) if t.startswith("Attn")),
        decoder_attn_levels=tuple(n - 1 - k for k, t in enumerate(up) if t.startswith("Attn")),
        attn_lowest=bool(cfg.get("mid_block_add_attention", True)), norm_groups=cfg.get("norm_num_groups", 32),
        downsample_padding="asymmetric", latent_channels=cfg.get("latent_channels", 3),
        codebook_size=cfg.get("num_vq_embeddings", 256), code_dim=cfg.get("vq_embed_dim") or cfg.get("latent_channels", 3),
        normalize_codes=False, image_size=_image_size(cfg.get("sample_size", 256), 2 ** (n - 1)), **_TAMING_LOSS,
        codebook_weight=0.25)


def _image_size(sample_size, factor: int) -> int:
    s = sample_size[0] if isinstance(sample_size, (list, tuple)) else int(sample_size)
    return s if s % factor == 0 and s >= factor else 256


def preset_config(name: str) -> TokenizerConfig:
    """A full-size released architecture: llamagen-vq16, llamagen-vq8, taming-f16-16384, ldm-vq-f4."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
    fmt, key = PRESETS[name]
    return llamagen_config(LLAMAGEN_PRESETS[key]) if fmt == "llamagen" else taming_config(TAMING_PRESETS[key])


# -- reading sources -------------------------------------------------------------------------------------------
def _read_llamagen(src: Path, config: str | Path | None) -> tuple[TokenizerConfig, dict, list[str]]:
    if config is None:
        raise ValueError("LlamaGen checkpoints do not record the model's architecture: pass --config with a JSON "
                         f"file of ModelArgs fields plus ch and num_res_blocks, or a preset ({', '.join(LLAMAGEN_PRESETS)})")
    args = dict(LLAMAGEN_PRESETS[str(config)]) if str(config) in LLAMAGEN_PRESETS else json.loads(Path(config).read_text())
    ck = load_checkpoint(src)
    # LlamaGen's own loaders take "ema" first, then "model", then "state_dict".
    key = next((k for k in ("ema", "model", "state_dict") if isinstance(ck, dict) and k in ck), None)
    if key is None:
        raise ValueError(f"{src.name} has none of the entries 'ema', 'model', 'state_dict' that LlamaGen writes")
    dropped = [f"checkpoint[{k!r}]" for k in ck if k != key]
    return llamagen_config(args), ck[key], dropped


def _read_taming(src: Path, config: str | Path | None) -> tuple[TokenizerConfig, dict, list[str]]:
    import yaml

    if config is None:
        raise ValueError("pass --config with the model's taming YAML (configs/…-project.yaml next to the checkpoint)")
    if str(config) in TAMING_PRESETS:
        params = TAMING_PRESETS[str(config)]
    else:
        y = yaml.safe_load(Path(config).read_text())
        model = y.get("model", y)
        target = model.get("target", "taming.models.vqgan.VQModel")
        if target not in ("taming.models.vqgan.VQModel", "ldm.models.autoencoder.VQModel"):
            raise ValueError(f"model.target {target!r} is not supported; vqtok imports taming.models.vqgan.VQModel "
                             "and ldm.models.autoencoder.VQModel")
        params = model["params"]
    ck = load_checkpoint(src)
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"{src.name} holds no state dict")
    dropped = [f"checkpoint[{k!r}]" for k in ck if k != "state_dict"] if "state_dict" in ck else []
    return taming_config(params), sd, dropped


def _read_diffusers(src: Path) -> tuple[TokenizerConfig, dict, list[str]]:
    if not (src / DIFFUSERS_CONFIG).is_file():
        raise FileNotFoundError(f"{src} is not a diffusers model folder (no {DIFFUSERS_CONFIG})")
    cfg = json.loads((src / DIFFUSERS_CONFIG).read_text())
    st = src / "diffusion_pytorch_model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(st))
    elif (src / "diffusion_pytorch_model.bin").is_file():
        sd = load_checkpoint(src / "diffusion_pytorch_model.bin")
    else:
        raise FileNotFoundError(f"{src} has neither diffusion_pytorch_model.safetensors nor .bin")
    return diffusers_config(cfg), sd, []


def _source_file(fmt: str, src: Path) -> Path:
    if fmt != "diffusers":
        return src
    st = src / "diffusion_pytorch_model.safetensors"
    return st if st.is_file() else src / "diffusion_pytorch_model.bin"


# -- import ----------------------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    out: Path
    format: str
    source: str
    source_sha256: str
    codebook_sha256: str
    parameters: int
    tensors: int
    ignored: list[str] = field(default_factory=list)  # training state and loss tensors, dropped

    def summary(self) -> str:
        return (f"imported {self.format} {self.source} (sha256 {self.source_sha256[:16]}…) → {self.out}\n"
                f"  {self.tensors} tensors, {self.parameters:,} parameters, codebook sha256 {self.codebook_sha256}\n"
                f"  ignored {len(self.ignored)} training-only entries (optimizer, discriminator, loss, …)")


def import_checkpoint(fmt: str, src: str | Path, out: str | Path, config: str | Path | None = None,
                      model_id: str | None = None) -> ImportReport:
    """Convert a LlamaGen `.pt`, taming `.ckpt` or diffusers folder `src` into a vqtok model folder `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"no such {'folder' if fmt == 'diffusers' else 'file'}: {src}")
    reader = {"llamagen": _read_llamagen, "taming": _read_taming}.get(fmt)
    cfg, sd, dropped = reader(src, config) if reader else _read_diffusers(src)
    loss = [k for k in sd if k.startswith(_LOSS_PREFIXES)]
    unknown_top = [d for d in dropped if d.split("'")[1] not in _TRAINING_ENTRIES]
    if unknown_top:
        raise ValueError(f"{src.name}: unexpected checkpoint entries {', '.join(unknown_top)}; vqtok knows the "
                         f"training entries {', '.join(_TRAINING_ENTRIES)}")
    state, ignored = from_source({k: v for k, v in sd.items() if k not in loss}, cfg, fmt)
    file = _source_file(fmt, src)
    sha = file_sha256(file)
    out = Path(out)
    cfg.model_id = model_id or out.name
    cfg.origin = f"{fmt}:{file.name} sha256:{sha}"
    model = Tokenizer(cfg)
    model.load_state_dict(state)
    model.save_pretrained(out)
    report = ImportReport(out, fmt, str(src), sha, model.codebook_sha256(), model.num_params(), len(state),
                          dropped + [f"state_dict[{k!r}]" for k in loss + ignored])
    (out / "README.md").write_text(model_card(cfg, report))
    return report


def random_preset(name: str, out: str | Path, model_id: str | None = None, seed: int = 0) -> Tokenizer:
    """A preset architecture with random weights (for export, serving and benchmarks at deployed sizes)."""
    cfg = preset_config(name)
    out = Path(out)
    cfg.model_id = model_id or out.name
    cfg.origin = f"preset:{name} random-weights seed:{seed}"
    torch.manual_seed(seed)
    model = Tokenizer(cfg).eval()
    model.save_pretrained(out)
    (out / "README.md").write_text(
        f"# {cfg.model_id}\n\nThe `{name}` architecture with **random weights** (seed {seed}), made by "
        f"`vqtok import --preset {name} --random`. For export, serving and benchmarks at the deployed size; its "
        f"outputs are meaningless.\n\n- parameters: {model.num_params():,}\n- factor {cfg.factor}, K = "
        f"{cfg.codebook_size}, d = {cfg.code_dim}\n- codebook sha256: `{model.codebook_sha256()}`\n")
    return model


def model_card(cfg: TokenizerConfig, r: ImportReport) -> str:
    return "\n".join([
        f"# {cfg.model_id}", "",
        f"Imported by `vqtok import {r.format}` from a {r.format} checkpoint; the weights are the source's, unchanged "
        "(renamed, q/k/v stacked; docs/IMPORT.md).", "",
        "| | |", "|---|---|",
        f"| source | `{Path(r.source).name}` ({r.format}) |",
        f"| source sha256 | `{r.source_sha256}` |",
        f"| licence | *fill in: the licence under which the source weights were released* |",
        f"| parameters | {r.parameters:,} |",
        f"| factor, K, d | {cfg.factor}, {cfg.codebook_size}, {cfg.code_dim} "
        f"({'l2-normalised' if cfg.normalize_codes else 'euclidean'} lookup) |",
        f"| codebook sha256 | `{r.codebook_sha256}` |",
        f"| ignored training entries | {len(r.ignored)} |", "",
    ])
