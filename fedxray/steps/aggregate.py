"""The coordinator's `aggregate` step: a round's masked updates -> their sum (and a closure)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fedxray.artifact import build_artifact, peek_header
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.filenames import round_file
from fedxray.fsio import check_writable, is_stdio, read_input, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan
from fedxray.secagg.accumulate import Accumulator
from fedxray.secagg.records import CoordinatorRound, RoundStatus, now
from fedxray.secagg.rounds import Cohort, closure_code
from fedxray.steps.protocol_state import coordinator_state
from fedxray.steps.shared import (
    Input,
    Party,
    beside,
    fields_of,
    item_label,
    load_items,
    plan_layout,
    plan_params,
)
from fedxray.verification import check_tensor_layout

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AggregateResult:
    sum: bytes  # the signed .sum file
    closure: bytes | None  # the signed .closure file, when the survivors must reveal
    round: int
    survivors: list[str]
    dropped: list[str]
    strict: bool
    closure_id: str | None  # None when no closure is needed
    sum_path: Path | None = None
    closure_path: Path | None = None

    @property
    def closure_code(self) -> str | None:
        return closure_code(self.closure_id) if self.closure_id else None

    def to_dict(self) -> dict:
        closure = None if self.closure_path is None else str(self.closure_path)
        return {
            **fields_of(self, "sum_path", "closure_path", "closure"),
            "sum": str(self.sum_path),
            "closure": closure,
            "closure_code": self.closure_code,
            "reveal_from": self.reveal_from,
        }

    @property
    def reveal_from(self) -> list[str]:
        """The sites that must answer the closure with `fedxray reveal`."""
        return list(self.survivors) if self.closure is not None else []


def aggregate(
    masked_inputs: Iterable[Input],
    plan: Plan,
    coordinator_key: PrivateIdentity,
    round: int,
    *,
    state_dir: str | os.PathLike | None,
    progress: Progress | None = None,
) -> AggregateResult:
    """Verify and sum the masked updates of one round.

    Inputs are read one at a time, so memory does not grow with the number of sites. A
    closure (signed list of survivors and dropped sites) is made when a site is missing or the
    plan is strict. ``state_dir`` (the coordinator's folder) remembers the round's decision:
    aggregating the round again with other inputs, e.g. a late file, is refused. Pass None
    only in tests.
    """
    plan.require_coordinator(coordinator_key)
    params = plan_params(plan)
    layout = plan_layout(plan)
    expected = layout.tensor_layout()
    acc = Accumulator(layout)
    inputs: dict[str, str] = {}
    labels: dict[str, str] = {}
    reports: dict[str, dict] = {}
    parent: str | None = None
    for label, art in load_items(masked_inputs, plan, "masked", round, plan.site_names):
        name = art.header.sender
        if name in inputs:
            raise VerificationError(
                f"{label} is a second masked update from {name} (the first was {labels[name]})",
                hint="each site sends one masked update per round; leave one of them out",
            )
        if art.header.meta.get("plan") != plan.digest:
            raise VerificationError(
                f"{label} was masked under another version of the plan",
                hint=f"{name} must use the plan this coordinator sent",
            )
        if parent is None:
            parent, first = art.header.parent, label
        elif art.header.parent != parent:
            raise VerificationError(
                f"{label} was trained from a different global model than {first}",
                hint="all sites of a round must start from the same .model file",
            )
        check_tensor_layout(art, expected, label)
        acc.add(art.tensors)
        # The payload hash (checked by load_artifact) names the masked values themselves: a
        # re-made file of the same masked update has the same one.
        inputs[name], labels[name] = art.header.payload_sha256, label
        report = art.header.meta.get("report", {})
        reports[name] = report if isinstance(report, dict) else {}
        del art  # the file's buffer can go before the next one is read
        if progress is not None:
            progress(len(inputs), len(plan.sites))
    if len(inputs) < params.min_sites:
        raise ProtocolRefusal(
            f"round {round}: {len(inputs)} masked update(s); the plan needs at least "
            f"{params.min_sites}",
            hint="fewer sites could let the coordinator single out one site's update",
        )
    assert parent is not None
    cohort = Cohort(
        sorted(inputs), sorted(set(plan.site_names) - set(inputs)), params.strict, inputs
    )
    closure_id = cohort.closure_id(plan, round, parent)
    meta = cohort.to_meta(plan)
    common = {
        "federation": plan.federation_id,
        "round": round,
        "sender": coordinator_key.name,
        "parent": parent,
        "signer": coordinator_key,
    }
    with coordinator_state(state_dir, coordinator_key.name, plan.federation_id) as st:
        rec = st.get(round) if st is not None else None
        _check_undecided(rec, round, cohort, closure_id)
        closure = (
            build_artifact(
                "closure", meta={**meta, "closure": closure_id}, tensors={}, **common
            ).data
            if cohort.needs_reveals
            else None
        )
        stated_id = closure_id if cohort.needs_reveals else None
        total = build_artifact(
            "sum",
            meta={**meta, "closure": stated_id, "reports": reports},
            tensors=acc.tensors(),
            **common,
        ).data
        if st is not None and (rec is None or rec.status is RoundStatus.OPEN):
            st.put(
                round,
                replace(
                    rec or CoordinatorRound(),
                    closure=closure_id,
                    needs_reveals=cohort.needs_reveals,
                    survivors=cohort.survivors,
                    dropped=cohort.dropped,
                    parent=parent,
                    aggregated_at=now(),
                ),
            )
    return AggregateResult(
        total, closure, round, cohort.survivors, cohort.dropped, params.strict, stated_id
    )


def _check_undecided(
    rec: CoordinatorRound | None, round: int, cohort: Cohort, closure_id: str
) -> None:
    """A round is decided once: the same decision may be re-issued, no other one."""
    if rec is None:
        return
    if rec.status is RoundStatus.ABANDONED:
        raise ProtocolRefusal(
            f"round {round} was abandoned; its masked updates can no longer be summed",
            hint=f"the sites train round {round + 1} from the model re-issued then",
        )
    if rec.closure is None or rec.closure == closure_id:
        return
    late = sorted(set(cohort.survivors) - set(rec.survivors or []))
    if late:
        raise ProtocolRefusal(
            f"round {round} was already closed without {', '.join(late)}; "
            "a masked update that arrives late cannot join the round",
            hint="that site can take part in the next round",
        )
    raise ProtocolRefusal(
        f"round {round} was already aggregated from other masked updates "
        f"({', '.join(rec.survivors or [])})",
        hint="use the .sum and .closure files made then",
    )


def common_round(items: Iterable[tuple[str, Input]]) -> int:
    """The round that every (label, source) names; a clear VerificationError otherwise.

    Headers are read unverified, only to pick the round: files whose header cannot be read
    are skipped here, and verifying them fails later with the real reason.
    """
    rounds: dict[int, list[str]] = {}
    for label, source in items:
        header = peek_header(source)
        if header is not None:
            rounds.setdefault(header.round, []).append(label)
    if not rounds:
        raise VerificationError("none of the inputs is a readable fedxray file")
    if len(rounds) > 1:
        found = "; ".join(
            f"round {r}: {', '.join(labels[:3])}{' ...' if len(labels) > 3 else ''}"
            for r, labels in sorted(rounds.items())
        )
        raise VerificationError(
            f"the inputs are for different rounds ({found})",
            hint="leave out the files of other rounds, or pick one round",
        )
    return next(iter(rounds))


def aggregate_files(
    masked: Sequence[Path],
    me: Party,
    *,
    round: int | None = None,
    output: Path | None = None,
    closure_output: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> AggregateResult:
    """:func:`aggregate` over files (one may be ``-``: standard input). The round defaults to
    the one every input names; the sum to round-NNNN.sum in ``state_dir``, the closure to
    round-NNNN.closure beside the sum."""
    if sum(is_stdio(p) for p in masked) > 1:
        raise FedxrayError("standard input can hold only one of the masked updates")
    for p in masked:
        if not is_stdio(p) and not p.is_file():
            what = "is not a file" if p.exists() else "not found"
            raise FedxrayError(f"masked update {what}: {p}")
    # Standard input can be read once only: take it now, the files are read one by one later.
    inputs: list = [read_input(p, "masked update") if is_stdio(p) else p for p in masked]
    labels = [item_label(p, i, "masked update") for i, p in enumerate(masked)]
    r = round if round is not None else common_round(zip(labels, inputs, strict=True))
    if r < 1:
        raise FedxrayError(f"the round must be at least 1, got {r}")
    out = output if output is not None else me.state_dir / round_file("sum", r)
    closure_out = closure_output or beside(out, round_file("closure", r), me.state_dir)
    if is_stdio(out) and is_stdio(closure_out):
        raise FedxrayError("the sum and the closure cannot both go to standard output")
    check_writable(out, force=force)
    # A closure follows whenever a site is missing or the plan is strict: when aggregation
    # succeeds this prediction is exact, so the closure's path is checked before the work too.
    if plan_params(me.plan).strict or len(inputs) < len(me.plan.sites):
        check_writable(closure_out, force=force)
    result = aggregate(inputs, me.plan, me.identity, r, state_dir=me.state_dir, progress=progress)
    if result.closure is not None:
        write_atomic(closure_out, result.closure, force=force)
    write_atomic(out, result.sum, force=force)
    closure_path = closure_out if result.closure is not None else None
    return replace(result, sum_path=out, closure_path=closure_path)
