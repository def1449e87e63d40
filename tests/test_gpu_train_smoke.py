"""bench.gpu_train on CPU with the tiny model: `pack` shrinks the train split and carries the perceptual weights;
`run` probes, trains both arms for the steps that fit (capped) and returns the three files a GPU call brings back."""
from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

from PIL import Image

from bench import gpu_train

PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"


def test_pack(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    Image.new("RGB", (800, 500), (200, 10, 10)).save(src / "images" / "big.png")
    Image.new("RGB", (300, 200), (10, 200, 10)).save(src / "images" / "big.jpg")  # same stem as big.png
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to display
    Image.new("RGB", (600, 400), (10, 10, 200)).save(src / "images" / "turned.jpg", exif=exif)
    Image.new("RGB", (400, 400), (10, 10, 200)).save(src / "images" / "val.jpg")
    rows = [("images/big.png", "train"), ("images/big.jpg", "train"), ("images/turned.jpg", "train"),
            ("images/val.jpg", "val")]
    (src / "manifest.tsv").write_text("file\tsplit\twidth\theight\n" + "".join(f"{f}\t{s}\t0\t0\n" for f, s in rows))

    info = gpu_train.pack(src / "manifest.tsv", tmp_path / "pack", max_side=320, quality=92)

    assert info["images"] == 3
    with open(tmp_path / "pack" / "photos" / "manifest.tsv", newline="") as f:
        packed = {r["file"]: (int(r["width"]), int(r["height"])) for r in csv.DictReader(f, delimiter="\t")}
    assert set(packed) == {"images/big.png.jpg", "images/big.jpg", "images/turned.jpg"}  # val rows stay behind
    sizes = {name: Image.open(tmp_path / "pack" / "photos" / name).size for name in packed}
    assert sizes == packed
    assert sizes["images/big.png.jpg"] == (512, 320)
    assert sizes["images/big.jpg"] == (300, 200)  # never enlarged
    assert sizes["images/turned.jpg"] == (320, 480)  # EXIF orientation applied, as training's loader does
    assert abs(Image.open(tmp_path / "pack" / "photos" / "images" / "big.png.jpg").getpixel((256, 160))[0] - 200) <= 3
    weights = list((tmp_path / "pack" / "site" / gpu_train.PERCEPTUAL_PACKAGE).rglob("*"))
    assert sum(p.stat().st_size for p in weights if p.is_file()) > 10 * 2**20  # the ImageNet weights themselves


def test_run_smoke(tmp_path):
    out = tmp_path / "out"
    summary = gpu_train.run(str(PHOTOS), out, budget_s=600, probe_steps=12, device="cpu", workers=1, smoke=True,
                            max_steps=6)

    assert sorted(p.name for p in out.iterdir()) == ["gpu_train.json", "rotation.tar.gz", "ste.tar.gz"]
    assert json.loads((out / "gpu_train.json").read_text()) == summary
    assert summary["steps"] == 6 and summary["disc_start"] == round(2100 * 6 / 3000)
    assert summary["finished"] == list(gpu_train.ARMS)
    assert all(summary["images_per_s"][arm] > 0 for arm in gpu_train.ARMS)
    for arm in gpu_train.ARMS:  # the probe timed both halves of the schedule: before and with the GAN
        assert summary["probe"][arm]["s_per_step_before_gan"] > 0 and summary["probe"][arm]["s_per_step_gan"] > 0
    cfgs = {}
    for arm in gpu_train.ARMS:
        with tarfile.open(out / f"{arm}.tar.gz") as tar:
            assert sorted(tar.getnames()) == sorted(f"{arm}/{name}" for name in gpu_train.KEEP)
            tar.extractall(tmp_path / "back", filter="data")
        cfgs[arm] = json.loads((tmp_path / "back" / arm / "train_config.json").read_text())
        curve = [json.loads(line) for line in (tmp_path / "back" / arm / "metrics.jsonl").read_text().splitlines()]
        assert curve[-1]["step"] == 6
    # the arms differ only in the gradient and the run folder
    assert cfgs["rotation"]["model"].pop("gradient") == "rotation" and cfgs["ste"]["model"].pop("gradient") == "ste"
    assert {k: v for k, v in cfgs["rotation"].items() if k != "out"} == {k: v for k, v in cfgs["ste"].items() if k != "out"}


def test_hard_stop_kills_and_reports(tmp_path):
    """An arm still running at the limit is killed and reported unfinished (the call must end inside its limit)."""
    recipe = gpu_train.load_recipe(smoke=True)
    cfgs = {arm: gpu_train.arm_config(recipe, arm, str(PHOTOS), tmp_path, 10**6, "cpu", 1) for arm in gpu_train.ARMS}
    wall, finished = gpu_train.train_both(cfgs, limit_s=3)
    assert finished == [] and wall < 30
