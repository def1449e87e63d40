"""Training: `vqtok train` end to end on the fixture photos with a tiny model, exact resume, corrupt files, manifest
splits, DDP (gloo, 2 CPU processes), and the data pipeline's resumable sampling."""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vqtok.tokenizer.data import CropDataset, ResumableSampler, collate_skip_none, list_images
from vqtok.tokenizer.model import Tokenizer
from vqtok.tokenizer.train import TrainConfig, Trainer, _lr_factor


def write_corrupt(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG" + bytes(range(256)))
    return path


def run_cli(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


def last_json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line in output:\n{stdout[-2000:]}"
    return json.loads(lines[-1])


# -- `vqtok train` end to end ----------------------------------------------------------------------------------------

def test_cli_train_writes_a_loadable_run_and_skips_corrupt_files(tmp_path, photos, tiny_config, subprocess_env):
    data = tmp_path / "data"
    data.mkdir()
    for p in photos[:3]:
        shutil.copy(p, data / p.name)
    write_corrupt(data / "broken.jpg")
    (data / "notes.txt").write_text("not an image, not listed")  # ignored by extension
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": tiny_config, "log_every": 1, "grid_every": 2, "warmup": 1}))
    out = tmp_path / "run"
    # 2 steps × batch 2 = one pass over the 4 images, so the corrupt one is drawn exactly once.
    proc = run_cli(["-m", "vqtok", "train", str(data), "--out", str(out), "--config", str(config), "--steps", "2",
                    "--batch-size", "2", "--crop", "32", "--device", "cpu", "--workers", "1", "--no-progress"],
                   subprocess_env)

    assert "skipping" in proc.stderr and "broken.jpg" in proc.stderr, proc.stderr[-3000:]
    result = last_json_line(proc.stdout)
    assert result["step"] == 2 and math.isfinite(result["loss"]) and result["perceptual"] > 0

    for name in ("config.json", "model.safetensors", "train_state.pt", "train_config.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    model = Tokenizer.from_pretrained(out)
    assert model.config.codebook_size == tiny_config["codebook_size"] and model.factor == 2
    codes = model.encode(torch.zeros(1, 3, 32, 32))
    assert codes.shape == (1, 16, 16)

    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert all(math.isfinite(m[k]) for k in ("loss", "rec", "perceptual", "usage", "perplexity", "lr"))
        assert 0 < m["usage"] <= 1 and 1 <= m["perplexity"] <= tiny_config["codebook_size"]

    grid = Image.open(out / "grids" / "step_000002.png")
    assert grid.mode == "RGB" and grid.size[0] == 2 * 32 and grid.size[1] % 32 == 0 and grid.size[1] >= 32
    curves = Image.open(out / "training.png")  # drawn at the final checkpoint
    assert curves.size == (1100, 700) and len(curves.convert("RGB").getcolors(1 << 20)) > 20

    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    assert int(state["step"]) == 2
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in state["model"].items())


# -- exact resume ------------------------------------------------------------------------------------------------

class _Killed(Exception):
    pass


def _resume_options(tiny_config: dict) -> dict:
    model = tiny_config | {"revive_dead_codes": True, "dead_code_threshold": 0.995}  # revival fires every step
    return {"model": model, "split": "train", "batch_size": 2, "crop": 32, "perceptual": "none", "warmup": 2,
            "disc_start": 1, "ema": True, "ema_decay": 0.9, "checkpoint_every": 2, "log_every": 1, "grid_every": 0,
            "workers": 0, "device": "cpu", "progress": False, "steps": 4}


def test_resume_is_bit_exact(tmp_path, photos, tiny_config, monkeypatch, caplog):
    """4 steps in one go == 2 steps, a kill right after the checkpoint, then `vqtok train --resume` to step 4.
    With the GAN on from step 1 (discriminator and its optimiser must resume), dead-code revival firing (global
    RNG and the quantizer's usage statistics must resume) and weight EMA. The data is a manifest whose 'val' rows
    name a missing file: the 'train' split alone must be read."""
    from vqtok.cli import main

    data = tmp_path / "data"
    data.mkdir()
    rows = ["file\tsplit"] + [f"{p.name}\ttrain" for p in photos[:4]] + ["missing_val.jpg\tval"]
    for p in photos[:4]:
        shutil.copy(p, data / p.name)
    (data / "manifest.tsv").write_text("\n".join(rows) + "\n")
    opts = _resume_options(tiny_config)

    revived = []
    from vqtok.tokenizer.quantizer import VectorQuantizer

    real_revive = VectorQuantizer._revive_dead

    def spy(self, e, codes):
        before = self.codebook.detach().clone()
        real_revive(self, e, codes)
        revived.append(int((self.codebook.detach() != before).any(1).sum()))

    monkeypatch.setattr(VectorQuantizer, "_revive_dead", spy)

    # Uninterrupted run.
    full = tmp_path / "full"
    from vqtok.tokenizer.train import train

    caplog.set_level(logging.WARNING, logger="vqtok.data")
    train(TrainConfig.from_dict(opts | {"data": str(data / "manifest.tsv"), "out": str(full)}))
    assert sum(revived) > 0, "dead-code revival never fired: the test would not cover its resume"

    # Interrupted run: killed right after the step-2 checkpoint.
    half = tmp_path / "half"
    real_save = Trainer.save

    def save_then_die(self):
        real_save(self)
        if self.step == 2:
            raise _Killed

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(_Killed):
        train(TrainConfig.from_dict(opts | {"data": str(data / "manifest.tsv"), "out": str(half)}))
    monkeypatch.setattr(Trainer, "save", real_save)
    mid = load_file(str(half / "model.safetensors"))

    cfg_file = tmp_path / "resume.json"
    cfg_file.write_text(json.dumps({k: v for k, v in opts.items() if k != "device"}))
    rc = main(["train", str(data), "--out", str(half), "--config", str(cfg_file), "--split", "train",
               "--device", "cpu", "--resume", "--no-progress"])
    assert rc == 0

    assert not [r for r in caplog.records if "skipping" in r.getMessage()], "a non-train manifest row was read"

    a, b = load_file(str(full / "model.safetensors")), load_file(str(half / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run: {differ[:5]}"
    assert any(not torch.equal(a[k], mid[k]) for k in a), "the second half did not train"

    sa = torch.load(full / "train_state.pt", map_location="cpu", weights_only=True)
    sb = torch.load(half / "train_state.pt", map_location="cpu", weights_only=True)
    assert int(sa["step"]) == int(sb["step"]) == 4
    for part in ("model", "disc", "ema"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), f"{part}.{k}"
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    steps = [json.loads(ln)["step"] for ln in (half / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_without_state_is_a_clear_error(tmp_path, tiny_config):
    from vqtok.tokenizer.train import train

    cfg = TrainConfig.from_dict(_resume_options(tiny_config) | {"data": str(tmp_path), "out": str(tmp_path / "x")})
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        train(cfg, resume=True)


# -- DDP ----------------------------------------------------------------------------------------------------------

def test_ddp_two_cpu_ranks_stay_in_sync(tmp_path, photos, tiny_config, subprocess_env):
    """torchrun (python -m torch.distributed.run) with 2 gloo ranks; revival and the GAN on, so the all-reduced
    dead-code statistics and the two-pass discriminator step are exercised across ranks."""
    opts = _resume_options(tiny_config) | {"split": None}
    for k in ("device", "steps", "checkpoint_every"):
        opts.pop(k)
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(opts))
    out = tmp_path / "ddp"
    proc = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "vqtok", "train", str(photos[0].parent), "--out", str(out), "--config", str(config),
                    "--steps", "3", "--device", "cpu", "--no-progress"], subprocess_env)
    result = last_json_line(proc.stdout)
    assert result["step"] == 3
    assert result["ranks_in_sync"] is True
    assert Tokenizer.from_pretrained(out).config.revive_dead_codes is True


# -- data pipeline ------------------------------------------------------------------------------------------------

def test_list_images_folder_and_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.webp"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "readme.md").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "sub/c.webp"]

    man = tmp_path / "m.tsv"
    man.write_text("file\tsplit\nb.jpg\ttrain\na.PNG\tval\nsub/c.webp\ttrain\nb.jpg\ttrain\n")
    assert [p.name for p in list_images(man, "train")] == ["b.jpg", "c.webp"]  # duplicates dropped
    assert [p.name for p in list_images(man, "val")] == ["a.PNG"]
    assert len(list_images(man)) == 3
    with pytest.raises(ValueError, match="split 'test'"):
        list_images(man, "test")

    # A folder with manifest.tsv and a split uses the manifest.
    (tmp_path / "manifest.tsv").write_text(man.read_text())
    assert [p.name for p in list_images(tmp_path, "val")] == ["a.PNG"]

    bad = tmp_path / "bad.tsv"
    bad.write_text("path\tsplit\nb.jpg\ttrain\n")
    with pytest.raises(ValueError, match="'file' column"):
        list_images(bad)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


def test_resumable_sampler_is_a_pure_function_of_position():
    def take(s, n):
        it = iter(s)
        return [next(it) for _ in range(n)]

    full = take(ResumableSampler(5, seed=3), 23)
    assert take(ResumableSampler(5, seed=3, start=11), 12) == full[11:]
    # Each epoch is a permutation of all items.
    for epoch in range(4):
        assert sorted(i for i, _ in full[5 * epoch:5 * epoch + 5]) == list(range(5))
    # Two ranks interleave the single-process stream.
    r0 = take(ResumableSampler(5, seed=3, start=4, rank=0, world=2), 6)
    r1 = take(ResumableSampler(5, seed=3, start=4, rank=1, world=2), 6)
    assert r0 == full[4:16:2] and r1 == full[5:17:2]
    assert take(ResumableSampler(5, seed=4), 10) != full[:10]
    assert len({s for _, s in full}) == len(full)  # a distinct augmentation seed per sample


def test_crop_dataset_items(tmp_path, photos):
    paths = [photos[0], write_corrupt(tmp_path / "bad.jpg")]
    ds = CropDataset(paths, crop=32)
    a = ds[(0, 123)]
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, ds[(0, 123)])                 # augmentation is a function of the sample seed
    assert any(not torch.equal(a, ds[(0, s)]) for s in range(124, 130))
    assert ds[(1, 0)] is None
    batch = collate_skip_none([a, None, a])
    assert batch.shape == (2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="every image"):
        collate_skip_none([None, None])


def test_lr_schedule_and_options():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert _lr_factor(0, cfg) == pytest.approx(0.1)
    assert _lr_factor(9, cfg) == pytest.approx(1.0)
    assert _lr_factor(10, cfg) == pytest.approx(1.0)
    assert _lr_factor(55, cfg) == pytest.approx(0.55)
    assert _lr_factor(100, cfg) == pytest.approx(0.1)
    factors = [_lr_factor(s, cfg) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(factors, factors[1:]))
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict({"scale": [1, 1.5]}).scale == (1, 1.5)


def test_cli_set_overrides():
    from vqtok.cli import train as cmd_train
    from vqtok.cli import build_parser

    args = build_parser().parse_args(["train", "d", "--out", "o", "--steps", "7", "--gradient", "ste",
                                      "--set", "disc_start=5", "--set", "model.codebook_size=64",
                                      "--set", "recon=l2", "--no-progress"])
    cfg = cmd_train.build_config(args)
    assert cfg.steps == 7 and cfg.disc_start == 5 and cfg.recon == "l2" and cfg.progress is False
    assert cfg.model == {"gradient": "ste", "codebook_size": 64}
    assert cfg.data == "d" and cfg.out == "o"


def test_plot_training_draws_every_panel(tmp_path):
    from vqtok.tokenizer.plots import plot_training

    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    assert plot_training(path, tmp_path / "empty.png") is None and not (tmp_path / "empty.png").exists()
    rows = [{"step": s, "loss": 1 / s, "rec": 0.5 / s, "perceptual": 0.1, "commit_codebook": 0.01, "g_loss": 0.0,
             "d_loss": 0.0, "usage": min(1, s / 50), "perplexity": 2 * s, "quant_error": 1 / s, "lr": 1e-4}
            for s in range(1, 60)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 60, "lo')  # a torn last line is skipped
    out = plot_training(path, tmp_path / "plots" / "training.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    colours = {(31, 119, 180), (255, 127, 14), (214, 39, 40), (44, 160, 44)}  # usage, perplexity, quant error, lr
    present = {tuple(c) for c in img.reshape(-1, 3)}
    assert colours <= present, colours - present


def test_colour_jitter_rotates_hue_scales_saturation_keeps_greys():
    from vqtok.tokenizer.data import jitter_colour

    a = np.array([[[10, 200, 10], [128, 128, 128], [200, 10, 10], [10, 10, 200]]], np.uint8)
    assert np.array_equal(jitter_colour(a, 0, 1.0), a)
    third = jitter_colour(a, 256 / 3, 1.0)  # a third of a turn: red → green → blue → red
    assert np.abs(third.astype(int) - a[:, [3, 1, 0, 2]]).max() <= 2
    assert np.array_equal(third[0, 1], a[0, 1])  # grey has no hue
    desat = jitter_colour(a, 0, 0.0)
    assert (desat.max(-1) - desat.min(-1)).max() <= 1 and np.array_equal(desat.max(-1), a.max(-1))  # value kept
    more = jitter_colour(np.array([[[150, 100, 100]]], np.uint8), 0, 2.0)
    assert more[0, 0, 0] == 150 and more[0, 0, 1] < 100  # saturation up, value kept


def test_crop_dataset_colour_jitter(photos):
    plain, jit = CropDataset(photos[:1], crop=32), CropDataset(photos[:1], crop=32, hue=1.0, saturation=(0.5, 1.5))
    off = CropDataset(photos[:1], crop=32, hue=0.0, saturation=(1.0, 1.0))
    assert torch.equal(plain[(0, 7)], off[(0, 7)])  # off: the same samples as before the option existed
    assert torch.equal(jit[(0, 7)], jit[(0, 7)])  # a function of the sample seed
    assert sum(not torch.equal(plain[(0, s)], jit[(0, s)]) for s in range(8)) >= 7


def test_grey_patches_are_neutral_and_off_by_default():
    from vqtok.tokenizer.data import paint_patches

    base = np.zeros((64, 64, 3), np.uint8)
    base[..., 0] = 255  # red background, so a painted grey is told apart from it
    for s in range(50):  # grey = 0 draws nothing extra: the samples of earlier runs are kept
        assert np.array_equal(paint_patches(base, random.Random(s)), paint_patches(base, random.Random(s), 0.0))
    grey = [paint_patches(base, random.Random(s), 1.0).reshape(-1, 3).astype(int) for s in range(50)]
    painted = np.concatenate([g[(g != [255, 0, 0]).any(1)] for g in grey])
    assert len(painted) > 0 and (painted.max(1) == painted.min(1)).all()  # every painted pixel is neutral
    some = [paint_patches(base, random.Random(s), 0.3).reshape(-1, 3).astype(int) for s in range(200)]
    neutral = sum(((g.max(1) == g.min(1)) & (g[:, 0] != 255)).any() for g in some)
    assert 30 < neutral < 100  # ~1/3: 1-3 rectangles each neutral with p 0.3, white (value 1) ones not counted


@pytest.mark.parametrize("key", ["hue", "patches", "patch_grey"])
def test_probability_options_are_checked(key):
    with pytest.raises(ValueError, match=key):
        TrainConfig.from_dict({key: 1.5})
    assert getattr(TrainConfig.from_dict({key: 0.2}), key) == 0.2


def test_colour_patches_reach_saturated_corners(photos):
    from vqtok.tokenizer.data import paint_patches

    base = np.full((64, 64, 3), 128, np.uint8)
    painted = [paint_patches(base, random.Random(s)) for s in range(400)]
    assert all(p.shape == base.shape and p.dtype == np.uint8 for p in painted)
    assert np.array_equal(paint_patches(base, random.Random(3)), paint_patches(base, random.Random(3)))
    assert sum(not np.array_equal(p, base) for p in painted) == 400  # every call paints something
    px = np.concatenate([p.reshape(-1, 3) for p in painted]).astype(int)
    chroma = px.max(1) - px.min(1)
    assert (chroma >= 250).mean() > 0.02  # vivid, near-primary colours are common, unlike in the photos
    full = sum(len(np.unique(p.reshape(-1, 3), axis=0)) == 1 for p in painted)
    assert 60 < full < 250  # whole flat crops occur (a flat image is what the colour eval feeds)
    off, on = CropDataset(photos[:1], crop=32), CropDataset(photos[:1], crop=32, patches=1.0)
    assert torch.equal(off[(0, 7)], CropDataset(photos[:1], crop=32, patches=0.0)[(0, 7)])
    assert all(not torch.equal(off[(0, s)], on[(0, s)]) for s in range(8))


def test_init_fine_tunes_from_a_model(tmp_path, tiny_config):
    from vqtok.tokenizer.model import TokenizerConfig

    torch.manual_seed(5)
    src = Tokenizer(TokenizerConfig.from_dict(tiny_config))
    src.save_pretrained(tmp_path / "src")
    cfg = TrainConfig.from_dict({"model": tiny_config | {"gradient": "ste"}, "init": str(tmp_path / "src"),
                                 "device": "cpu", "perceptual": "none"})
    trainer = Trainer(cfg)
    assert trainer.model.config.gradient == "ste"
    for (k, a), b in zip(src.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), k
    bad = TrainConfig.from_dict({"model": tiny_config | {"code_dim": 8}, "init": str(tmp_path / "src"),
                                 "device": "cpu", "perceptual": "none"})
    with pytest.raises(ValueError, match="code_dim"):
        Trainer(bad)


def test_bf16_autocast_on_cpu_when_asked_with_an_fp32_quantizer(tiny_config):
    """`autocast: bf16` runs the networks in bf16 on a CPU too ("auto" keeps fp32 there); the quantizer's distances,
    codes and rotation stay fp32, and a training step (GAN on) gives finite losses and fp32 weights."""
    base = {"model": tiny_config, "device": "cpu", "perceptual": "none", "disc_start": 0, "batch_size": 2, "crop": 32}
    assert not Trainer(TrainConfig.from_dict(base)).autocast["enabled"]
    torch.manual_seed(0)
    trainer = Trainer(TrainConfig.from_dict(base | {"autocast": "bf16"}))
    assert trainer.autocast["enabled"] and trainer.autocast["dtype"] == torch.bfloat16
    seen = {}

    def dtype_of(name):
        def hook(module, args, out) -> None:
            seen.setdefault(name, (out[0] if isinstance(out, tuple) else out).dtype)
        return hook
    trainer.model.quantizer.register_forward_hook(dtype_of("zq"))
    trainer.model.encoder.register_forward_hook(dtype_of("e"))
    out = trainer.train_step(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert seen == {"e": torch.bfloat16, "zq": torch.float32}
    assert all(math.isfinite(v) for v in out.values())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    with pytest.raises(ValueError, match="autocast"):
        TrainConfig.from_dict(base | {"autocast": "fp8"})


def test_decoder_only_fine_tune_keeps_every_code(tmp_path, tiny_config):
    """`trainable: decoder` moves the decoder (and post_quant_proj) but not one bit of the encoder, quant_proj or
    codebook — even with dead-code revival set to fire every step and the GAN on — so codes never change."""
    from vqtok.tokenizer.model import TokenizerConfig

    torch.manual_seed(5)
    model_cfg = tiny_config | {"revive_dead_codes": True, "dead_code_threshold": 0.995}
    Tokenizer(TokenizerConfig.from_dict(model_cfg)).save_pretrained(tmp_path / "src")
    base = {"model": model_cfg, "init": str(tmp_path / "src"), "device": "cpu", "perceptual": "none",
            "disc_start": 0, "batch_size": 2, "crop": 32, "warmup": 1, "lr": 1e-2, "ema": True}
    before = Tokenizer.from_pretrained(tmp_path / "src").state_dict()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for trainable in ("decoder", "all"):
        trainer = Trainer(TrainConfig.from_dict(base | {"trainable": trainable}))
        for _ in range(3):
            trainer.train_step(images)
        for model in (trainer.model, trainer.ema):
            moved = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
            if trainable == "decoder":
                assert moved == {"decoder", "post_quant_proj"}, moved
            else:  # the control: the same steps move the frozen parts when nothing is frozen
                assert {"encoder", "quant_proj", "quantizer"} <= moved, moved
    with pytest.raises(ValueError, match="init"):
        TrainConfig.from_dict({"model": tiny_config, "trainable": "decoder"})


def test_lab_l1_matches_scikit_image_and_is_zero_on_identical_images():
    """The colour loss is the channel-mean |ΔL*a*b*| / 100 that scikit-image's rgb2lab gives (an independent
    implementation), 0 on identical images, and a hue shift the RGB L1 barely sees weighs more than an equal-L1 grey
    shift does (why it exists)."""
    from skimage.color import rgb2lab

    from vqtok.tokenizer.losses import lab_l1

    def model_range(rgb):
        return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 4, 4) / 127.5 - 1

    pairs = [((224, 163, 46), (244, 144, 52)), ((10, 200, 10), (10, 166, 24)), ((0, 0, 0), (255, 255, 255))]
    for a, b in pairs:
        want = np.abs(rgb2lab(np.array([[a]]) / 255) - rgb2lab(np.array([[b]]) / 255)).mean() / 100
        assert lab_l1(model_range(b), model_range(a)).item() == pytest.approx(want, rel=1e-3)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert lab_l1(x, x).item() == 0.0
    hue = lab_l1(model_range((224, 163, 46)), model_range((214, 173, 36)))    # RGB L1 10/127.5: a hue shift
    grey = lab_l1(model_range((128, 128, 128)), model_range((138, 138, 138)))  # RGB L1 10/127.5: lighter
    assert hue > grey


def test_colour_weight_adds_the_lab_term_to_the_training_loss(tiny_config):
    """colour_weight > 0 puts colour_weight × lab_l1 in the loss (logged as "lab"); 0 leaves the loss as it was."""
    base = {"model": tiny_config, "device": "cpu", "perceptual": "none", "batch_size": 2, "crop": 32, "lr": 0.0}
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        out[w] = Trainer(TrainConfig.from_dict(base | {"colour_weight": w})).train_step(images)
    assert out[0.0]["lab"] == 0.0 and out[2.0]["lab"] > 0
    assert out[2.0]["loss"] - out[0.0]["loss"] == pytest.approx(2.0 * out[2.0]["lab"], rel=1e-4)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="colour_weight"):
            TrainConfig.from_dict(base | {"colour_weight": bad})
