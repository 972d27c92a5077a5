"""A site's `mask` step: its signed update -> its signed masked update (one per round)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray.artifact import build_artifact
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.fsio import input_name, is_stdio, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan
from fedxray.secagg.records import SiteRound, now
from fedxray.secagg.rounds import REPORT_KEYS, masked_vector, update_examples
from fedxray.steps.protocol_state import open_state
from fedxray.steps.shared import Party, check_output, fields_of, plan_layout, plan_params
from fedxray.verification import check_tensor_layout, load_artifact


@dataclass(frozen=True)
class MaskResult:
    data: bytes  # the signed .masked file
    round: int
    site: str
    federation: str
    clipped: int  # values outside the plan's range, clipped to it
    values: int  # values in the update
    clip: float  # the plan's range: [-clip, clip]
    path: Path | None = None  # where it was written

    def to_dict(self) -> dict:
        doc = fields_of(self, "path")
        return {"masked": str(self.path), **doc, "bytes": len(self.data), "warnings": self.warnings}

    @property
    def warnings(self) -> list[str]:
        if not self.clipped:
            return []
        return [
            f"{self.clipped} of {self.values} values were clipped to the plan's range "
            f"±{self.clip:g}"
        ]


def mask_update(
    update_bytes: bytes,
    plan: Plan,
    key: PrivateIdentity,
    state_dir: str | os.PathLike,
    *,
    what: str = "update",
) -> MaskResult:
    """Turn this site's signed update into its signed masked update (one per round).

    Masking the same update again gives the same masked tensors (a lost file can be remade);
    a different update for a round already masked is refused (ProtocolRefusal). The decision
    is recorded in the site's state file before the masked file is returned.
    """
    plan.require_site(key)
    params = plan_params(plan)
    model_layout = plan.model_layout()
    layout = plan_layout(plan, model_layout)
    upd = load_artifact(update_bytes, plan=plan, kind="update", sender=key.name, what=what)
    check_tensor_layout(upd, model_layout, what)
    r = upd.header.round
    if r < 1:
        raise VerificationError(f"the update names round {r}; rounds start at 1")
    count = update_examples(upd.header.meta, params)
    report = {k: upd.header.meta[k] for k in REPORT_KEYS if k in upd.header.meta}
    with open_state(state_dir, key.name, plan.federation_id) as st:
        rec = st.get(r)
        if rec is not None:
            if rec.update != upd.digest or rec.plan != plan.digest:
                raise ProtocolRefusal(
                    f"{key.name} already masked a different update for round {r}",
                    hint="a site sends one masked update per round; send the .masked file "
                    "made then (masking that same update again reproduces it)",
                )
            rounding, nonce = bytes.fromhex(rec.rounding_seed), rec.nonce
        else:
            rounding = os.urandom(32)
            nonce = os.urandom(16).hex() if params.strict else None
        flat, clipped = masked_vector(key, plan, params, layout, upd, count, r, rounding, nonce)
        signed = build_artifact(
            "masked",
            federation=plan.federation_id,
            round=r,
            sender=key.name,
            parent=upd.header.parent,
            meta={"plan": plan.digest, "strict": params.strict, "report": report},
            tensors=layout.views(flat),
            signer=key,
        )
        del flat
        if rec is None:
            st.put(
                r,
                SiteRound(
                    update=upd.digest,
                    plan=plan.digest,
                    parent=upd.header.parent,
                    rounding_seed=rounding.hex(),
                    nonce=nonce,
                    masked=signed.payload_sha256,
                    masked_at=now(),
                ),
            )
        elif rec.masked != signed.payload_sha256:
            raise ProtocolRefusal(
                f"masking round {r} again gave different values than the first time",
                hint="was fedxray upgraded in between? send the .masked file made then",
            )
    values = layout.size - 2
    return MaskResult(signed.data, r, key.name, plan.federation_id, clipped, values, params.clip)


def mask_file(update: Path, me: Party, *, output: Path | None = None, force=False) -> MaskResult:
    """:func:`mask_update` from a file (``-``: standard input) to ``output``, by default the
    update's name with ``.masked``."""
    if output is None:
        if is_stdio(update):
            raise FedxrayError(
                "an update read from standard input needs -o FILE", hint="or -o - for stdout"
            )
        output = update.with_suffix(".masked")
    check_output(output, force, update, f"the masked file would replace its update: {output}")
    result = mask_update(
        read_input(update, "update"), me.plan, me.identity, me.state_dir,
        what=input_name(update),
    )  # fmt: skip
    write_atomic(output, result.data, force=force)
    return replace(result, path=output)
