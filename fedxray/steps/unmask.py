"""The coordinator's `unmask` step: a round's sum and the reveals -> the next global model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray.artifact import Artifact, peek_header
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.filenames import averaged_file, round_file
from fedxray.fsio import Undo, input_name, is_stdio, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.modelfile import build_model_artifact, load_model_artifact
from fedxray.plan import Plan
from fedxray.secagg.records import CoordinatorRound, RoundStatus, now
from fedxray.secagg.rounds import Cohort, Revealed, read_cohort, read_seed, unmasked_mean
from fedxray.secagg.server import ServerConfig, server_step
from fedxray.steps.protocol_state import coordinator_state
from fedxray.steps.server_state import (
    WindowModel,
    load_server_round,
    next_window,
    save_server_state,
    server_state_path,
)
from fedxray.steps.shared import (
    Input,
    Party,
    beside,
    check_output,
    fields_of,
    item_label,
    load_items,
    plan_layout,
    plan_params,
)
from fedxray.training.averaging import mean_state
from fedxray.verification import check_tensor_layout, load_artifact


@dataclass(frozen=True)
class UnmaskResult:
    model: bytes  # the signed .model file of the next round
    round: int  # the next round, which trains from this model
    provenance: dict  # as recorded in the model: sites, dropped, epsilon reported, server
    path: Path | None = None
    # With the plan's average-last K > 1: the published model (the mean of the last K global
    # models, signed like them) and the rounds it averages.
    averaged: bytes | None = None
    averaged_rounds: list[int] | None = None
    averaged_path: Path | None = None

    def to_dict(self) -> dict:
        doc = {"model": str(self.path), **fields_of(self, "path", "averaged_path")}
        if self.averaged is not None:
            doc["averaged_model"] = str(self.averaged_path)
        return doc

    @property
    def sites(self) -> list[str]:
        return list(self.provenance["sites"])

    @property
    def dropped(self) -> list[str]:
        return list(self.provenance["dropped"])


def unmask(
    sum_bytes: bytes,
    reveals: Iterable[Input],
    plan: Plan,
    coordinator_key: PrivateIdentity,
    global_model_bytes: bytes,
    server_state_file: str | os.PathLike | None,
    *,
    fresh_server_state: bool = False,
    state_dir: str | os.PathLike | None = None,
    names: tuple[str, str] = ("sum", "global model"),
) -> UnmaskResult:
    """Remove the remaining masks, average, apply the server step; return the next model.

    The next model (round + 1) carries a provenance record: round, contributing and dropped
    sites, the privacy each site reported, the parent model's hash. The server optimiser's
    state (a coordinator-local safetensors file) is updated before the model is returned;
    running the same round again recomputes the same step instead of applying it twice.
    ``state_dir`` (the coordinator's folder, as for aggregate) refuses a round that was
    abandoned and records that this one was unmasked, so it cannot be abandoned later.
    ``names``: how messages name the sum and the model (their files, as given).
    """
    plan.require_coordinator(coordinator_key)
    params = plan_params(plan)
    layout = plan_layout(plan)
    cfg = plan.settings.server_config()  # bad server settings fail before any work
    total = load_artifact(
        sum_bytes, plan=plan, kind="sum", sender=plan.coordinator.name, what=names[0]
    )
    r = total.header.round
    with coordinator_state(state_dir, coordinator_key.name, plan.federation_id) as st:
        rec = st.get(r) if st is not None else None
        if rec is not None and rec.status is RoundStatus.ABANDONED:
            raise ProtocolRefusal(
                f"round {r} was abandoned; it can no longer be unmasked",
                hint=f"round {r + 1} trains from the model re-issued when it was abandoned",
            )
        model = load_model_artifact(global_model_bytes, plan, round_number=r, what=names[1])
        if model.digest != total.header.parent:
            raise VerificationError(
                f"the sum of round {r} was made from updates of another global model "
                f"({total.header.parent[:12]}, given {model.digest[:12]})"
            )
        check_tensor_layout(total, layout.tensor_layout(), "sum")
        meta = total.header.meta
        cohort = read_cohort(meta, plan, params, "the sum")
        closure_id = meta.get("closure")
        expected_id = cohort.closure_id(plan, r, total.header.parent)
        if closure_id not in (None, expected_id) or (closure_id is None) == cohort.needs_reveals:
            raise VerificationError("the sum's closure id does not match its contents")
        revealed = _collect_reveals(reveals, plan, r, cohort, closure_id)
        delta = unmasked_mean(total, revealed, layout, params, cohort.survivors)
        state_file = Path(server_state_file) if server_state_file is not None else None
        before, window = load_server_round(
            state_file, plan, cfg, r, model.digest, fresh_server_state
        )
        weights, after = server_step(model.tensors, delta, before, cfg)
        provenance = _provenance(total, model, cohort, cfg)
        nxt = build_model_artifact(
            plan,
            round_number=r + 1,
            weights=weights,
            parent=model.digest,
            provenance=provenance,
            signer=coordinator_key,
        )
        k = plan.settings.server.average_last
        published = None
        if k > 1:
            window = next_window(window, model.tensors, WindowModel(r + 1, nxt.digest, weights), k)
            published = _published(plan, window, nxt.digest, coordinator_key)
        if state_file is not None:
            save_server_state(
                state_file, plan, cfg, r, model.digest, before, after, window if k > 1 else ()
            )
        if st is not None:
            st.put(r, replace(rec or CoordinatorRound(), unmasked=nxt.digest, unmasked_at=now()))
    if published is None:
        return UnmaskResult(nxt.data, r + 1, provenance)
    return UnmaskResult(
        nxt.data, r + 1, provenance, averaged=published, averaged_rounds=[m.round for m in window]
    )


def _published(plan: Plan, window, iterate: str, signer: PrivateIdentity) -> bytes:
    """The published model: the mean of the window's models, a round r + 1 model whose parent
    is the model the sites train from; its provenance says that it is an average (train-local
    and abandon refuse it)."""
    return build_model_artifact(
        plan,
        round_number=window[-1].round,
        weights=mean_state([m.tensors for m in window]),
        parent=iterate,
        provenance={
            "round": window[-1].round - 1,
            "averaged": {
                "rounds": [m.round for m in window],
                "models": [m.digest for m in window],
            },
            "iterate": iterate,
        },
        signer=signer,
    ).data


def _provenance(total: Artifact, model: Artifact, cohort: Cohort, cfg: ServerConfig) -> dict:
    """Where the next model comes from: round, sum, contributing and dropped sites, the
    privacy each site reported, the server step."""
    reports = total.header.meta.get("reports")
    reports = reports if isinstance(reports, dict) else {}
    return {
        "round": total.header.round,
        "parent": model.digest,
        "sum": total.digest,
        "sites": cohort.survivors,
        "dropped": cohort.dropped,
        "epsilon": {s: reports.get(s, {}).get("epsilon") for s in cohort.survivors},
        "reports": {s: reports.get(s, {}) for s in cohort.survivors},
        "strict": cohort.strict,
        "server": {"optimizer": cfg.optimizer, "lr": cfg.lr},
    }


def _collect_reveals(
    reveals: Iterable[Input], plan: Plan, round_number: int, cohort: Cohort, closure_id
) -> Revealed:
    got: dict[str, tuple[dict[str, bytes], bytes | None]] = {}
    digests: dict[str, str] = {}
    reveals = list(reveals)
    if closure_id is None and reveals:
        raise FedxrayError(
            f"round {round_number} needs no reveals (no site dropped out), "
            f"got {item_label(reveals[0], 0, 'reveal')}"
        )
    for label, art in load_items(reveals, plan, "reveal", round_number, cohort.survivors):
        name, meta = art.header.sender, art.header.meta
        if name in digests:
            if digests[name] == art.digest:
                continue  # the same file given twice
            raise VerificationError(f"{label} is a second, different reveal from {name}")
        if meta.get("closure") != closure_id:
            raise VerificationError(f"{label} answers another closure of round {round_number}")
        pairs = meta.get("pairs")
        if not isinstance(pairs, dict) or set(pairs) != set(cohort.dropped):
            raise VerificationError(f"{label} does not reveal exactly the dropped sites' seeds")
        own = meta.get("self")
        if cohort.strict != (own is not None):
            raise VerificationError(f"{label} does not match the plan's masking mode")
        got[name] = (
            {p: read_seed(v, label) for p, v in pairs.items()},
            read_seed(own, label) if own is not None else None,
        )
        digests[name] = art.digest
    missing = sorted(set(cohort.survivors) - set(got)) if closure_id is not None else []
    if missing:
        raise FedxrayError(
            f"round {round_number} cannot be unmasked yet: no reveal from {', '.join(missing)}",
            hint="every surviving site must run `fedxray reveal` on the round's closure",
        )
    return got


def unmask_files(
    me: Party,
    total: Path,
    reveals: Sequence[Path],
    *,
    model: Path | None = None,
    output: Path | None = None,
    fresh_server_state: bool = False,
    force: bool = False,
) -> UnmaskResult:
    """:func:`unmask` over files. The round's model defaults to round-NNNN.model beside the
    sum, the output to the next round's model there; the server state lives in ``state_dir``."""
    if any(is_stdio(p) for p in reveals):
        raise FedxrayError("reveals are read from files, not standard input")
    sum_bytes = read_input(total, "sum")
    header = peek_header(sum_bytes)
    if header is None:
        raise FedxrayError(f"{total} is not a readable sum", hint="check the file")
    r = header.round
    model_path = model or beside(total, round_file("model", r), Path("."))
    out = output or beside(total, round_file("model", r + 1), Path("."))
    check_output(out, force, model_path, f"the next model would replace round {r}'s model: {out}")
    published = None
    if me.plan.settings.server.average_last > 1:
        anchor = beside(total, round_file("model", r + 1), Path(".")) if is_stdio(out) else out
        published = anchor.with_name(averaged_file(anchor.name))
        check_output(published, force, model_path, f"the average would replace {model_path}")
    result = unmask(
        sum_bytes,
        list(reveals),
        me.plan,
        me.identity,
        read_input(model_path, "global model"),
        server_state_path(me.state_dir, me.plan),
        fresh_server_state=fresh_server_state,
        state_dir=me.state_dir,
        names=(input_name(total), input_name(model_path)),
    )
    with Undo() as undo:  # the average first: no model the sites get goes without it
        if published is not None:
            write_atomic(undo.file(published), result.averaged, force=force)
        write_atomic(out, result.model, force=force)
    return replace(result, path=out, averaged_path=published)
