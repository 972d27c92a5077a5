"""The project's sample data: three hospitals and a held-out test set of phantoms.

Sites differ in size, class balance and equipment (like real federations): hospital-a
sends CR images (MONOCHROME1, 12-bit JPEG 2000, some 8-bit JPEG), hospital-b DX images
(16-bit with rescale, VOI LUT, RLE, one old export without meta header), hospital-c PNG
and JPEG exports; test mixes them all. Each folder has a labels.csv (file,label,patient)
at its top, so `fedxray prep sample_data/hospital-a` needs no label option.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedxray.errors import FedxrayError
from fedxray.sampledata.dicom_writer import (
    STYLES,
    FakePatient,
    fake_patient,
    fake_study,
    write_image,
)
from fedxray.sampledata.phantom import LABELS, render


@dataclass(frozen=True)
class SiteSpec:
    counts: dict[str, int]  # images per class
    styles: dict[str, float]  # style name -> weight
    rows: tuple[int, int]  # source image height range (pixels)
    id_prefix: str
    institution: str
    repeat_patients: float = 0.2  # share of patients with a second image


WIDTH_RATIO = (0.82, 0.95)  # width / height of a phantom: portrait, like a chest film

# Many small images rather than few large ones: DP-SGD needs hundreds of patients per site
# to learn anything at epsilon 8, the federation trains at 32-64 px, and the whole folder
# must stay a few MB. The costlier lossless styles get the smaller weights.
SITES: dict[str, SiteSpec] = {
    "hospital-a": SiteSpec(
        {"normal": 170, "bacterial": 160, "viral": 150},
        {"cr-mono1-12bit-j2k": 0.75, "cr-mono2-8bit-jpeg": 0.25},
        (100, 132),
        "NB",
        "NORTHBROOK CHILDREN'S HOSPITAL (SYNTHETIC)",
    ),
    "hospital-b": SiteSpec(
        {"normal": 135, "bacterial": 81, "viral": 54},
        {
            "dx-mono2-16bit-j2k": 0.74,
            "dx-mono2-12bit-voilut": 0.08,
            "dx-mono1-16bit-rle": 0.06,
            "cr-mono2-8bit-rle": 0.06,
            "cr-mono1-10bit-nometa": 0.04,
        },
        (120, 150),
        "WV",
        "WILLOWVALE GENERAL INFIRMARY (SYNTHETIC)",
    ),
    "hospital-c": SiteSpec(
        {"normal": 40, "bacterial": 72, "viral": 56},
        {"png-8bit": 0.4, "png-16bit": 0.08, "jpeg": 0.52},
        (112, 136),
        "ST",
        "STONEHAVEN PAEDIATRIC CLINIC (SYNTHETIC)",
    ),
    "test": SiteSpec(
        {"normal": 40, "bacterial": 40, "viral": 40},
        {
            "cr-mono1-12bit-j2k": 0.3,
            "cr-mono2-8bit-jpeg": 0.15,
            "dx-mono2-16bit-j2k": 0.2,
            "dx-mono2-12bit-voilut": 0.1,
            "png-8bit": 0.15,
            "jpeg": 0.1,
        },
        (112, 140),
        "TS",
        "HELD-OUT EVALUATION CENTRE (SYNTHETIC)",
    ),
}

README = """\
# Sample data (synthetic)

Computer-generated chest radiograph phantoms for trying fedxray end to end. They show no
real patient: every name, ID, date, UID, institution and accession number in the DICOM
headers is invented, so you can check that `fedxray prep` leaves all of them behind.

- hospital-a, hospital-b, hospital-c: three sites of different size, class balance and
  equipment (CR/DX DICOM: MONOCHROME1 and 2, 8/10/12/16-bit, JPEG 2000, JPEG, RLE,
  uncompressed without meta header; PNG and JPEG exports).
- test: a held-out set for evaluation.
- Classes: normal; bacterial (focal lobar consolidation); viral (diffuse bilateral
  interstitial markings, hyperinflation).
- Each folder has labels.csv (file,label,patient) at its top.

Regenerate (byte-identical for the same seed and library versions):

    python -m fedxray.sampledata sample_data --seed {seed} --force
"""


def _plan_site(rng, spec: SiteSpec, used_ids: set[str]) -> list[tuple[str, FakePatient, int]]:
    """(label, patient, image index of that patient) for every image of a site."""
    images: list[tuple[str, FakePatient, int]] = []
    for label in LABELS:
        n = spec.counts.get(label, 0)
        while n > 0:
            patient = fake_patient(rng, spec.id_prefix, used_ids)
            k = 2 if n >= 2 and rng.random() < spec.repeat_patients else 1
            images.extend((label, patient, i) for i in range(k))
            n -= k
    order = rng.permutation(len(images))  # file order must not give the label away
    return [images[i] for i in order]


def generate_site(
    folder: Path, name: str, spec: SiteSpec, seed: int, used_ids: set[str]
) -> list[Path]:
    """Write one site's images and labels.csv into folder (which must exist and be empty)."""
    rng = np.random.default_rng([seed, *name.encode()])
    styles = list(spec.styles)
    weights = np.array([spec.styles[s] for s in styles], dtype=float)
    weights /= weights.sum()
    rows_out = []
    paths = []
    for idx, (label, patient, k) in enumerate(_plan_site(rng, spec, used_ids), start=1):
        style = STYLES[styles[int(rng.choice(len(styles), p=weights))]]
        height = int(rng.integers(spec.rows[0], spec.rows[1] + 1) * style.size_factor)
        width = int(height * rng.uniform(*WIDTH_RATIO))
        values = render(rng, label, height, width)
        path = folder / f"img{idx:04d}{style.suffix}"
        study = fake_study(rng, name, spec.institution, patient, k)
        write_image(path, values, style, study, rng)
        rows_out.append((path.name, label, patient.patient_id))
        paths.append(path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "label", "patient"])
    w.writerows(sorted(rows_out))
    (folder / "labels.csv").write_text(buf.getvalue(), encoding="utf-8")
    return paths


def generate(
    outdir: str | Path,
    seed: int = 0,
    sites: dict[str, SiteSpec] | None = None,
    force: bool = False,
) -> dict[str, list[Path]]:
    """Write every site folder (and a README.md) under outdir; returns the image paths.

    An existing, non-empty site folder is refused unless force is given, which replaces it.
    """
    outdir = Path(outdir)
    sites = SITES if sites is None else sites
    for name in sites:
        folder = outdir / name
        if folder.exists() and any(folder.iterdir()) and not force:
            raise FedxrayError(
                f"{folder} exists and is not empty",
                hint="replace it only on purpose",
                option="force",
            )
    outdir.mkdir(parents=True, exist_ok=True)
    used_ids: set[str] = set()
    written = {}
    for name, spec in sites.items():
        folder = outdir / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        written[name] = generate_site(folder, name, spec, seed, used_ids)
    (outdir / "README.md").write_text(README.format(seed=seed), encoding="utf-8")
    return written
