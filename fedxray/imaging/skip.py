"""Why a file was not used: a reason code plus a one-line message."""

from __future__ import annotations

from fedxray.errors import FedxrayError

# Reason codes are part of the interface (prep reports, --json output): never rename one.
SKIP_REASONS: dict[str, str] = {
    "unreadable": "corrupt, truncated or empty file",
    "not-an-image": "not a DICOM, PNG or JPEG image",
    "undecodable": "image codec not available here",
    "wrong-modality": "DICOM modality is not a radiograph (CR or DX)",
    "multi-frame": "multi-frame DICOM",
    "colour-dicom": "colour DICOM",
    "implausible": "not plausibly a radiograph: too small, blank, noise, a gradient or colour",
    "unknown-label": "no label for one of the plan's classes",
    "duplicate": "same pixels as an image already kept",
}


class SkipImage(FedxrayError):
    """A file that cannot be used as a radiograph; ``reason`` is a key of SKIP_REASONS.

    It is a FedxrayError so that a single-file command (predict) can show it as is.
    """

    def __init__(self, reason: str, message: str, hint: str | None = None):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(message, hint=hint)
        self.reason = reason

    def __reduce__(self):
        # Travels back from decoding worker processes.
        return (SkipImage, (self.reason, self.message, self.hint))
