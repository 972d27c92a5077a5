"""The federation plan: who takes part, with which keys, training and privacy settings."""

from __future__ import annotations

import copy
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedxray.artifact import build_artifact, parse_unverified, verify_signature
from fedxray.errors import FedxrayError, VerificationError
from fedxray.fsio import read_input
from fedxray.keys import PrivateIdentity, PublicIdentity, check_name

DEFAULT_CLASSES = ["normal", "bacterial", "viral"]

DEFAULT_SETTINGS: dict = {
    "model": {"arch": "smallcnn", "image_size": 64, "in_channels": 1},
    "classes": DEFAULT_CLASSES,
    "training": {
        "rounds": 5,
        "local_epochs": 2,
        "batch_size": 64,
        "optimizer": "sgd",
        # Under DP nearly every per-example gradient is clipped to max_grad_norm, so steps are
        # small: 0.15 learned in both DP and non-DP runs where 0.05 stayed at chance.
        "lr": 0.15,
        "momentum": 0.9,
        "weight_decay": 0.0,
    },
    "dp": {
        "enabled": True,
        "epsilon": 8.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "allow_no_dp": False,
    },
    "secagg": {"frac_bits": 24, "clip": 4.0, "max_examples": 1_000_000, "strict": False},
    "server": {"optimizer": "fedavg", "lr": 1.0, "momentum": 0.9},
    "min_sites": 3,
}

# FedAdam moves each weight by about lr per round: it needs a far smaller rate than FedAvg.
DEFAULT_SERVER_LR = {"fedavg": 1.0, "momentum": 1.0, "fedadam": 0.01}


def card_from_bytes(data: bytes, what: str = "site card") -> PublicIdentity:
    """Load a self-signed site card (.pub) and check its signature."""
    art, message = parse_unverified(data, what)
    if art.header.kind != "card":
        raise VerificationError(
            f"{what} is a {art.header.kind!r} file, expected a site card (.pub)"
        )
    ident = PublicIdentity.from_dict(art.header.meta.get("identity", {}))
    if ident.name != art.header.sender:
        raise VerificationError(f"{what}: sender does not match the card's name")
    verify_signature(art, message, ident, what)
    return ident


def card_bytes(ident: PrivateIdentity) -> bytes:
    return build_artifact(
        "card",
        federation="",
        round=0,
        sender=ident.name,
        parent="",
        meta={"identity": ident.public.to_dict()},
        tensors={},
        signer=ident,
    )


@dataclass(frozen=True)
class Plan:
    federation_id: str
    name: str
    coordinator: PublicIdentity
    sites: tuple[PublicIdentity, ...]
    settings: dict
    digest: str  # SHA-256 of the plan file; the initial model names it as parent
    created: str

    # --- lookups -------------------------------------------------------------------------
    def member(self, name: str) -> PublicIdentity | None:
        if name == self.coordinator.name:
            return self.coordinator
        return self.site(name)

    def site(self, name: str) -> PublicIdentity | None:
        for s in self.sites:
            if s.name == name:
                return s
        return None

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    @property
    def classes(self) -> list[str]:
        return list(self.settings["classes"])

    @property
    def model(self) -> dict:
        return self.settings["model"]

    @property
    def training(self) -> dict:
        return self.settings["training"]

    @property
    def dp(self) -> dict:
        return self.settings["dp"]

    @property
    def secagg(self) -> dict:
        return {**self.settings["secagg"], "min_sites": self.settings["min_sites"]}

    @property
    def server(self) -> dict:
        return self.settings["server"]

    @property
    def min_sites(self) -> int:
        return int(self.settings["min_sites"])

    def model_layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        from fedxray.models.registry import state_layout

        m = self.model
        return state_layout(m["arch"], m["image_size"], len(self.classes), m.get("in_channels", 1))

    def require_site(self, ident: PrivateIdentity) -> PublicIdentity:
        """The key must be one of the plan's sites, with the very keys on its card."""
        card = self.site(ident.name)
        if card is None:
            raise FedxrayError(
                f"{ident.name!r} is not a site of federation {self.name}",
                hint=f"sites: {', '.join(self.site_names)}",
            )
        if card != ident.public:
            raise VerificationError(
                f"the plan's card for {ident.name!r} has different keys than {ident.name}.key",
                hint="the coordinator must build the plan from this site's current .pub file",
            )
        return card

    def require_coordinator(self, ident: PrivateIdentity) -> None:
        if ident.public != self.coordinator:
            raise VerificationError(
                f"key {ident.name!r} is not the coordinator key of federation {self.name}"
            )

    def summary(self) -> dict:
        return {
            "federation": self.federation_id,
            "name": self.name,
            "created": self.created,
            "coordinator": self.coordinator.to_dict(),
            "sites": [s.to_dict() for s in self.sites],
            "settings": self.settings,
            "digest": self.digest,
        }


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def make_settings(overrides: dict | None = None) -> dict:
    return _merge(DEFAULT_SETTINGS, overrides or {})


def validate_settings(settings: dict, n_sites: int) -> None:
    """Reject impossible combinations at init, with one clear line each."""
    from fedxray.models.registry import MODEL_NAMES

    m, t, dp = settings["model"], settings["training"], settings["dp"]
    classes = settings["classes"]
    if m["arch"] not in MODEL_NAMES:
        raise FedxrayError(
            f"unknown model {m['arch']!r}", hint=f"choose one of {', '.join(MODEL_NAMES)}"
        )
    if not 16 <= int(m["image_size"]) <= 1024:
        raise FedxrayError("--image-size must be between 16 and 1024")
    if int(m.get("in_channels", 1)) != 1:
        raise FedxrayError("models take single-channel (greyscale) input")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise FedxrayError("at least two distinct class names are needed")
    for c in classes:
        check_name(c)
    if int(t["rounds"]) < 1 or int(t["local_epochs"]) < 1:
        raise FedxrayError("--rounds and --local-epochs must be at least 1")
    if int(t["batch_size"]) < 1 or float(t["lr"]) <= 0:
        raise FedxrayError("batch size and learning rate must be positive")
    if dp["enabled"]:
        if not 0 < float(dp["epsilon"]) <= 100:
            raise FedxrayError("--epsilon must be in (0, 100]")
        if not 0 < float(dp["delta"]) < 1e-2:
            raise FedxrayError(
                "--delta must be in (0, 0.01)", hint="use delta well below 1/patients"
            )
        if float(dp["max_grad_norm"]) <= 0:
            raise FedxrayError("the clipping norm must be positive")
    min_sites = int(settings["min_sites"])
    if min_sites < 2:
        raise FedxrayError("--min-sites must be at least 2 (3 is the safe default)")
    if n_sites < min_sites:
        raise FedxrayError(f"the plan names {n_sites} site(s) but --min-sites is {min_sites}")
    if settings["server"]["optimizer"] not in ("fedavg", "fedadam", "momentum"):
        raise FedxrayError("server optimiser must be fedavg, fedadam or momentum")
    try:
        from fedxray.secagg.fixedpoint import check_capacity
    except ImportError:  # pragma: no cover - secagg arrives in its own module
        return
    check_capacity(settings["secagg"], n_sites)


def settings_warnings(settings: dict) -> list[str]:
    """Legal but weaker choices that the coordinator should hear about."""
    out = []
    if int(settings["min_sites"]) < 3:
        out.append(
            "--min-sites 2: when only two sites contribute, each can recover the other's "
            "update from the next model; only differential privacy then protects it"
        )
    if not settings["dp"]["enabled"] or settings["dp"].get("allow_no_dp"):
        out.append("non-private (--no-dp) updates are accepted in this federation")
    return out


def create_plan(
    name: str,
    coordinator: PrivateIdentity,
    sites: list[PublicIdentity],
    settings: dict,
) -> bytes:
    check_name(name)
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise FedxrayError(f"two site cards have the same name: {sorted(names)}")
    if coordinator.name in names:
        raise FedxrayError(f"a site is named like the coordinator ({coordinator.name!r})")
    fps = [s.fingerprint for s in sites]
    if len(set(fps)) != len(fps):
        raise FedxrayError("two site cards carry the same keys")
    validate_settings(settings, len(sites))
    return build_artifact(
        "plan",
        federation=secrets.token_hex(16),
        round=0,
        sender=coordinator.name,
        parent="",
        meta={
            "name": name,
            "coordinator": coordinator.public.to_dict(),
            "sites": [s.to_dict() for s in sites],
            "settings": settings,
        },
        tensors={},
        signer=coordinator,
    )


def plan_from_bytes(data: bytes, what: str = "plan") -> Plan:
    art, message = parse_unverified(data, what)
    h = art.header
    if h.kind != "plan":
        raise VerificationError(f"{what} is a {h.kind!r} file, expected a federation plan (.plan)")
    try:
        coordinator = PublicIdentity.from_dict(h.meta["coordinator"])
        sites = tuple(PublicIdentity.from_dict(s) for s in h.meta["sites"])
        settings = make_settings(h.meta["settings"])
        name = str(h.meta["name"])
    except (KeyError, TypeError, FedxrayError) as e:
        raise VerificationError(f"{what} has a malformed plan header") from e
    if coordinator.name != h.sender:
        raise VerificationError(f"{what} was not signed by its coordinator")
    verify_signature(art, message, coordinator, what)
    return Plan(h.federation, name, coordinator, sites, settings, art.digest, h.created)


def load_plan(path: str | os.PathLike | None, expect_fingerprint: str | None = None) -> Plan:
    """Load and verify a plan; PATH falls back to $FEDXRAY_PLAN."""
    path = path or os.environ.get("FEDXRAY_PLAN")
    if not path:
        raise FedxrayError("no plan given", hint="pass --plan FILE or set FEDXRAY_PLAN")
    plan = plan_from_bytes(read_input(path, "plan"), what=Path(str(path)).name)
    fp = expect_fingerprint or os.environ.get("FEDXRAY_COORDINATOR_FINGERPRINT")
    if fp and fp.lower() != plan.coordinator.fingerprint:
        raise VerificationError(
            f"the plan's coordinator fingerprint is {plan.coordinator.fingerprint}, expected {fp}"
        )
    return plan
