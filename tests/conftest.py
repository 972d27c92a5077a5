"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# DICOM attributes that identify a patient or a visit: none of their values may leave prep.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StationName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
SHARED_DATA = Path(os.environ.get("FEDXRAY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the repo; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # Tests run beside other work on 2 cores; one torch thread keeps timings predictable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture(scope="session")
def fault_fed(tmp_path_factory):
    """A small real federation after one round (tests/faultfed.py), for the fault tests."""
    from tests.faultfed import build

    return build(tmp_path_factory.mktemp("faultfed"))
