"""The plan's geometry: how prep fits a non-square image into the square (pad or stretch),
and the refusal of a shard made in the other one (docs/data.md, "Pad or stretch")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fedxray.data.shard_io import read_shard
from fedxray.errors import EXIT_ERROR
from fedxray.imaging import load_radiograph
from fedxray.plan import load_plan
from fedxray.steps.model import load_model
from tests.cli_helpers import make_federation, run_cli
from tests.images import phantom_png


def _wide_png(path, rows=50, cols=100) -> None:
    wide = np.full((rows, cols), 200, np.uint8)
    wide[:, ::2] = 100  # texture, so the window is not degenerate
    Image.fromarray(wide).save(path)


def test_stretch_fills_the_square_where_pad_leaves_borders(tmp_path):
    _wide_png(tmp_path / "wide.png")
    padded = load_radiograph(tmp_path / "wide.png", 64, "pad").pixels
    stretched = load_radiograph(tmp_path / "wide.png", 64, "stretch").pixels
    assert (padded[:16] == 0).all() and (padded[48:] == 0).all()
    assert (stretched.mean(axis=1) > 50).all()  # every row holds image, none is border
    # A square image is the same in both geometries.
    _wide_png(tmp_path / "square.png", 80, 80)
    a = load_radiograph(tmp_path / "square.png", 64, "pad").pixels
    b = load_radiograph(tmp_path / "square.png", 64, "stretch").pixels
    assert np.array_equal(a, b)


def test_a_square_export_and_its_original_agree_when_stretched(tmp_path):
    """The case the geometry exists for: an original and its square copy (aspect not kept)
    come out alike when stretched, not when padded."""
    rng = np.random.default_rng(0)
    original = np.clip(rng.normal(128, 40, (120, 180)), 0, 255).astype(np.uint8)
    original = np.asarray(Image.fromarray(original).resize((90, 60)).resize((180, 120)))
    Image.fromarray(original).save(tmp_path / "original.png")
    Image.fromarray(original).resize((150, 150)).save(tmp_path / "square.png")
    gap = {}
    for geometry in ("pad", "stretch"):
        one = load_radiograph(tmp_path / "original.png", 48, geometry).pixels.astype(int)
        two = load_radiograph(tmp_path / "square.png", 48, geometry).pixels.astype(int)
        gap[geometry] = np.abs(one - two).mean()
    assert gap["stretch"] < 5 and gap["pad"] > 10 * gap["stretch"], gap


@pytest.fixture(scope="module")
def feds(tmp_path_factory):
    d = tmp_path_factory.mktemp("geometry")
    make_federation(d, "padded", "-o", d / "padded", "--model", "tinycnn", "--image-size", "16")
    make_federation(d, "stretched", "-o", d / "stretched", "--model", "tinycnn",
                    "--image-size", "16", "--geometry", "stretch")  # fmt: skip
    for k, cls in enumerate(("normal", "bacterial", "viral")):
        for i in range(3):  # chest phantoms twice as wide as tall
            phantom_png(d / "images" / cls / f"{cls}{i}.png", 3 * k + i, (96, 192), cls)
    return d


def _prep(d, fed: str, out: str):
    return run_cli("prep", d / "images", "-o", d / out, "--plan", d / fed / f"{fed}.plan",
                   "--key", d / "hosp-a.key", "-q")  # fmt: skip


def test_the_plan_carries_the_geometry_and_prep_follows_it(feds):
    d = feds
    assert load_plan(d / "padded" / "padded.plan").settings.model.geometry == "pad"
    assert load_plan(d / "stretched" / "stretched.plan").settings.model.geometry == "stretch"
    assert _prep(d, "padded", "p.shard").code == 0
    assert _prep(d, "stretched", "s.shard").code == 0
    padded, stretched = read_shard(d / "p.shard"), read_shard(d / "s.shard")
    assert (padded.geometry, stretched.geometry) == ("pad", "stretch")
    assert (padded.images[:, 0, :] == 0).all()  # wide images: black rows above
    assert (stretched.images[:, 0, :] > 0).any()
    # inspect says which, so a site can tell before train-local refuses a shard.
    shown = {out: json.loads(run_cli("inspect", d / out, "--json").out)["geometry"]
             for out in ("p.shard", "s.shard")}  # fmt: skip
    assert shown == {"p.shard": "pad", "s.shard": "stretch"}
    # A pad plan writes no geometry at all: its plan reads (and hashes) as before.
    doc = json.loads(run_cli("inspect", d / "padded" / "padded.plan", "--json").out)
    assert "geometry" not in json.dumps(doc)


@pytest.mark.parametrize("command", ["train-local", "evaluate"])
def test_a_shard_in_the_other_geometry_is_refused(feds, command):
    d = feds
    if not (d / "p.shard").exists():
        assert _prep(d, "padded", "p.shard").code == 0
    fed = d / "stretched"
    model = fed / "round-0001.model"
    out = d / f"{command}.out"
    args = ["--data", d / "p.shard", "-o", out] if command == "train-local" else [d / "p.shard"]
    r = run_cli(command, model, *args, "--plan", fed / "stretched.plan",
                "--key", d / "hosp-a.key")  # fmt: skip
    assert r.code == EXIT_ERROR and "geometry pad, the plan's is stretch" in r.err, r.err
    assert "Traceback" not in r.err and r.out == ""
    assert not out.exists()


def test_an_unknown_geometry_is_refused_before_anything_is_written(feds, tmp_path):
    r = run_cli("init", "--name", "x", "-o", tmp_path / "x", "--geometry", "crop",
                *(feds / f"hosp-{s}.pub" for s in "abc"))  # fmt: skip
    assert r.code == EXIT_ERROR and "geometry must be pad or stretch" in r.err, r.err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fed", ["padded", "stretched"])
def test_predict_decodes_in_the_plan_geometry(feds, fed, monkeypatch):
    """predict reads files itself (no shard): it must fit them as prep did for training."""
    import fedxray.steps.predict as predict

    seen = []

    def spy(path, image_size, geometry="pad"):
        seen.append(geometry)
        return load_radiograph(path, image_size, geometry)

    monkeypatch.setattr(predict, "load_radiograph", spy)
    model = load_model(feds / fed / "round-0001.model", feds / fed / f"{fed}.plan")
    files = sorted((feds / "images").rglob("*.png"))[:2]
    preds = list(predict.predict_files(model, files))
    assert [p.ok for p in preds] == [True, True]
    assert seen == [{"padded": "pad", "stretched": "stretch"}[fed]] * 2
