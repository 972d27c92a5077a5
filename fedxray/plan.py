"""The federation plan: who takes part, with which keys, under which settings."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fedxray.artifact import build_artifact, parse_unverified, verify_signature
from fedxray.errors import FedxrayError, VerificationError
from fedxray.fsio import input_name, read_input
from fedxray.keys import PrivateIdentity, PublicIdentity, check_name
from fedxray.settings import FederationSettings, SettingError


@dataclass(frozen=True)
class Plan:
    federation_id: str
    name: str
    coordinator: PublicIdentity
    sites: tuple[PublicIdentity, ...]
    settings: FederationSettings
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

    def model_layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype) of every tensor of the plan's model that travels."""
        from fedxray.models.registry import state_layout

        m = self.settings.model
        return state_layout(m.model_id, m.image_size, len(self.settings.classes), m.in_channels)

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
            "settings": self.settings.to_dict(),
            "digest": self.digest,
        }


def check_members(coordinator: PublicIdentity, sites: Sequence[PublicIdentity]) -> None:
    """Every party once: distinct site names and keys, and no site named or keyed like the
    coordinator (at init, and whenever a plan is loaded)."""
    names = [s.name for s in sites]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FedxrayError(f"two site cards have the same name: {', '.join(twice)}")
    if coordinator.name in names:
        raise FedxrayError(f"a site is named like the coordinator ({coordinator.name!r})")
    keys = [k for s in (coordinator, *sites) for k in (s.sign_public, s.kx_public)]
    if len(set(keys)) != len(keys):
        raise FedxrayError("two parties carry the same keys")


def create_plan(
    name: str,
    coordinator: PrivateIdentity,
    sites: list[PublicIdentity],
    settings: FederationSettings,
    backbone: dict | None = None,
    federation_id: str | None = None,
) -> bytes:
    """The signed plan; ``backbone`` (name -> array) is a frozen-backbone model's pretrained
    weights, which travel inside the plan (signed, and pinned by settings.model). The
    federation's id is fresh randomness unless given (a simulation with a seed: see
    fedxray.simulation.runner)."""
    check_name(name)
    check_members(coordinator.public, sites)
    settings.validate(len(sites))
    return build_artifact(
        "plan",
        federation=federation_id or secrets.token_hex(16),
        round=0,
        sender=coordinator.name,
        parent="",
        meta={
            "name": name,
            "coordinator": coordinator.public.to_dict(),
            "sites": [s.to_dict() for s in sites],
            "settings": settings.to_dict(),
        },
        tensors=dict(backbone or {}),
        signer=coordinator,
    ).data


def plan_from_bytes(data: bytes, what: str = "plan") -> Plan:
    art, message = parse_unverified(data, what)
    h = art.header
    if h.kind != "plan":
        raise VerificationError(f"{what} is a {h.kind!r} file, expected a federation plan (.plan)")
    try:
        settings = FederationSettings.from_dict(h.meta["settings"])
    except SettingError as e:
        raise VerificationError(
            f"{what}: {e.message}", hint="was the plan made by a newer fedxray?"
        ) from None
    except KeyError:
        raise VerificationError(f"{what} has a malformed plan header") from None
    try:
        coordinator = PublicIdentity.from_dict(h.meta["coordinator"])
        sites = tuple(PublicIdentity.from_dict(s) for s in h.meta["sites"])
        name = check_name(h.meta["name"])
    except (KeyError, TypeError, FedxrayError) as e:
        raise VerificationError(f"{what} has a malformed plan header") from e
    if coordinator.name != h.sender:
        raise VerificationError(f"{what} was not signed by its coordinator")
    verify_signature(art, message, coordinator, what)
    _register_backbone(art, settings, what)
    # Signed is not sound: a plan made by another tool or version is checked like at init.
    try:
        check_members(coordinator, sites)
        settings.check(len(sites))
    except FedxrayError as e:
        raise VerificationError(
            f"{what} is not a sound plan: {e.message}",
            hint="the coordinator must make a new plan with fedxray init",
        ) from None
    return Plan(h.federation, name, coordinator, sites, settings, art.digest, h.created)


def _register_backbone(art, settings: FederationSettings, what: str) -> None:
    """A plan carries its frozen backbone's weights, or no tensors at all."""
    digest = settings.model.backbone_sha256
    if not digest:
        if art.tensors:
            raise VerificationError(f"{what} carries tensors but its model has no backbone")
        return
    from fedxray.models.backbone import register

    try:
        register(digest, art.tensors)
    except VerificationError as e:
        raise VerificationError(f"{what}: {e.message}") from None


def load_plan(path: str | os.PathLike, expect_fingerprint: str | None = None) -> Plan:
    """Load and verify a plan; its coordinator must match $FEDXRAY_COORDINATOR_FINGERPRINT
    (or ``expect_fingerprint``) when that is set."""
    plan = plan_from_bytes(read_input(path, "plan"), what=input_name(path))
    fp = expect_fingerprint or os.environ.get("FEDXRAY_COORDINATOR_FINGERPRINT")
    if fp and fp.lower() != plan.coordinator.fingerprint:
        raise VerificationError(
            f"the plan's coordinator fingerprint is {plan.coordinator.fingerprint}, expected {fp}"
        )
    return plan
