"""State-dict key layouts of the code bases vqtok imports from: LlamaGen (`vq_model.py`), taming-transformers
(`diffusionmodules/model.py` + `VectorQuantizer2`, also the LDM VQ autoencoders) and diffusers (`VQModel`).

The three compute the same network as a `TokenizerConfig` set up by `tokenizer.importers`; only their tensor
names differ, plus two shapes: their attention has separate q, k, v 1×1 convs (vqtok: one `qkv` conv, q;k;v
stacked on the output axis) and diffusers stores the attention projections as Linear [C, C] (vqtok: 1×1 conv).
`Encoder.plan` / `Decoder.plan` name each module's role; this module turns roles into names.
"""
from __future__ import annotations

import torch

from .model import Tokenizer, TokenizerConfig

SOURCES = ("llamagen", "taming", "diffusers")

# Top-level tensors outside encoder/decoder: vqtok key → source key.
_QUANT = {"quant_proj": "quant_conv", "post_quant_proj": "post_quant_conv", "quantizer.codebook": "quantize.embedding.weight"}

# Sub-modules of a residual block and of an attention block: vqtok name → source name, per source.
_RES = {"llamagen": {"skip": "nin_shortcut"}, "taming": {"skip": "nin_shortcut"}, "diffusers": {"skip": "conv_shortcut"}}
_ATTN = {
    "llamagen": {"norm": "norm", "q": "q", "k": "k", "v": "v", "proj": "proj_out"},
    "taming": {"norm": "norm", "q": "q", "k": "k", "v": "v", "proj": "proj_out"},
    "diffusers": {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj": "to_out.0"},
}
# Attention names of diffusers folders saved before diffusers 0.14 (`from_pretrained` still reads them).
_ATTN_DIFFUSERS_OLD = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

# Tensors of a source's model state dict that take no part in encode/decode (LlamaGen's training-time usage
# buffer). They are dropped and counted.
IGNORED_MODEL_KEYS = {"llamagen": ("quantize.codebook_used",), "taming": (), "diffusers": ()}


def _mid(source: str, part: str, idx: int) -> str:
    """Mid block member idx (0: res, 1: attention, 2: res)."""
    if source == "llamagen":
        return f"{part}.mid.{idx}"
    if source == "taming":
        return f"{part}.mid." + ("block_1", "attn_1", "block_2")[idx]
    return f"{part}.mid_block." + ("resnets.0", "attentions.0", "resnets.1")[idx]


def _role_prefix(source: str, part: str, role: tuple, levels: int) -> str:
    kind = role[0]
    if kind in ("conv_in", "conv_out"):
        return f"{part}.{kind}"
    if kind == "norm_out":
        return f"{part}." + ("conv_norm_out" if source == "diffusers" else "norm_out")
    level = role[1]
    # Decoder levels: taming numbers them by resolution (up.0 = full resolution); LlamaGen and diffusers in
    # processing order (conv_blocks.0 / up_blocks.0 = lowest resolution).
    k = levels - 1 - level if part == "decoder" and source != "taming" else level
    block = {"llamagen": f"{part}.conv_blocks.{k}", "taming": f"{part}.{'down' if part == 'encoder' else 'up'}.{k}",
             "diffusers": f"{part}.{'down' if part == 'encoder' else 'up'}_blocks.{k}"}[source]
    if kind in ("down", "up"):
        sampler = {"llamagen": "downsample" if kind == "down" else "upsample", "taming": "downsample" if kind == "down"
                   else "upsample", "diffusers": "downsamplers.0" if kind == "down" else "upsamplers.0"}[source]
        return f"{block}.{sampler}.conv"
    sub = {"llamagen": ("res", "attn"), "taming": ("block", "attn"), "diffusers": ("resnets", "attentions")}[source]
    return f"{block}.{sub[0] if kind == 'res' else sub[1]}.{role[2]}"


def _translate_block(source: str, prefix: str, rest: str, attention: bool) -> list[str]:
    """Name(s) of one tensor inside a res or attention block; several names mean q, k, v stacked."""
    name, param = rest.rsplit(".", 1)
    if attention:
        names = _ATTN[source]
        if name == "qkv":
            return [f"{prefix}.{names[x]}.{param}" for x in "qkv"]
        return [f"{prefix}.{names[name]}.{param}"]
    return [f"{prefix}.{_RES[source].get(name, name)}.{param}"]


def key_map(config: TokenizerConfig, source: str) -> dict[str, list[str]]:
    """vqtok state-dict key → the source key(s) holding it (q, k, v for a `qkv` tensor), in vqtok's key order."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    with torch.device("meta"):  # names and shapes only: no memory for the weights
        model = Tokenizer(config)
    levels = len(config.channel_mult)
    out: dict[str, list[str]] = {}
    for key in model.state_dict():
        top = next((t for t in _QUANT if key == t or key.startswith(t + ".")), None)
        if top is not None:
            out[key] = [_QUANT[top] + key[len(top):]]
            continue
        part, _, idx, *rest = key.split(".")          # encoder.net.<idx>.<...>
        role = getattr(model, part).plan[int(idx)]
        rest = ".".join(rest)
        if role[0] == "mid":
            m, sub = rest.split(".", 1)
            prefix = _mid(source, part, int(m))
            out[key] = _translate_block(source, prefix, sub, attention=m == "1")
        elif role[0] in ("res", "attn"):
            prefix = _role_prefix(source, part, role, levels)
            out[key] = _translate_block(source, prefix, rest, attention=role[0] == "attn")
        else:  # a plain conv or norm; Upsample keeps its conv under `.conv`
            prefix = _role_prefix(source, part, role, levels)
            out[key] = [prefix + "." + rest.removeprefix("conv.")]
    return out


def _source_name(sd: dict, name: str, source: str) -> str:
    if name in sd or source != "diffusers":
        return name
    for new, old in _ATTN_DIFFUSERS_OLD.items():
        if f".{new}." in name and name.replace(f".{new}.", f".{old}.") in sd:
            return name.replace(f".{new}.", f".{old}.")
    return name


def from_source(state_dict: dict[str, torch.Tensor], config: TokenizerConfig, source: str
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A source model state dict → (vqtok state dict, the source keys dropped as unused).

    Raises ValueError naming every missing key, every key no vqtok tensor takes, and any shape mismatch."""
    mapping = key_map(config, source)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Tokenizer(config).state_dict().items()}
    ignored = [k for k in state_dict if k in IGNORED_MODEL_KEYS[source]]
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, names in mapping.items():
        names = [_source_name(state_dict, n, source) for n in names]
        absent = [n for n in names if n not in state_dict]
        if absent:
            missing += absent
            continue
        used.update(names)
        parts = [state_dict[n].detach().to(torch.float32) for n in names]
        if len(parts) > 1 or parts[0].dim() == 2 and len(shapes[key]) == 4:  # Linear [C, C] → 1×1 conv
            parts = [p.reshape(p.shape[0], -1, *[1] * (len(shapes[key]) - 2)) if p.dim() == 2 else p for p in parts]
        t = torch.cat(parts) if len(parts) > 1 else parts[0]
        if t.shape != shapes[key]:
            raise ValueError(f"{' + '.join(names)}: shape {tuple(t.shape)}, but the config gives {tuple(shapes[key])} "
                             "for it; the config does not describe this checkpoint")
        out[key] = t.contiguous()
    unexpected = [k for k in state_dict if k not in used and k not in ignored]
    if missing or unexpected:
        raise ValueError(
            f"the {source} state dict does not match the config: "
            + (f"missing {len(missing)} key(s): {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}. " if missing else "")
            + (f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}."
               if unexpected else ""))
    return out, ignored


def to_source(model: Tokenizer, source: str) -> dict[str, torch.Tensor]:
    """vqtok model → a state dict in the source's own layout (for round-trip tests and for loading vqtok weights
    into the original code)."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, names in key_map(model.config, source).items():
        t = sd[key].detach().clone()
        parts = t.chunk(len(names)) if len(names) > 1 else [t]
        for n, p in zip(names, parts):
            if source == "diffusers" and any(f".{a}." in n for a in ("to_q", "to_k", "to_v", "to_out.0")) and p.dim() == 4:
                p = p.reshape(p.shape[0], p.shape[1])  # diffusers' attention projections are Linear layers
            out[n] = p.contiguous()
    return out
