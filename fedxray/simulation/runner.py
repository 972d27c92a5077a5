"""Run a whole federation on one machine: a folder per party and a courier between them.

Every step calls the same library functions as the CLI and leaves the same files a real
federation would, so any file in the run folder can be inspected afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedxray import keys
from fedxray.data.pseudonym import site_secret
from fedxray.data.shard import Shard
from fedxray.data.shard_io import read_shard, write_shard
from fedxray.data.split import holdout_split
from fedxray.errors import FedxrayError
from fedxray.filenames import averaged_file, round_file
from fedxray.fsio import Undo, make_folder, read_input, write_atomic
from fedxray.plan import Plan, load_plan
from fedxray.settings import DEFAULT_CLASSES, OPTIONS, FederationSettings
from fedxray.settings_options import option_default, settings_from_options
from fedxray.simulation.courier import INBOX, Courier
from fedxray.simulation.split import split_sites
from fedxray.steps.aggregate import aggregate
from fedxray.steps.identity import create_identity
from fedxray.steps.mask import mask_update
from fedxray.steps.reveal import reveal
from fedxray.steps.server_state import server_state_path
from fedxray.steps.site_memory import SiteFiles
from fedxray.steps.unmask import unmask

COORDINATOR_DIR = "coordinator"
EVALUATION_DIR = "evaluation"
SITES_DIR = "sites"
FEDERATION_NAME = "simulation"


def site_round_seed(run_seed: int, site_index: int, round_number: int) -> int:
    """A site's training seed for one round, derived from the run's seed: independent across
    sites and rounds (one shared seed would give every site the SAME DP noise, which then
    does not average out) and the same on every rerun of the run."""
    entropy = [int(run_seed), int(site_index), int(round_number)]
    words = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


def default_sample_data() -> Path | None:
    """The repository's bundled sample_data/ folder, when fedxray runs from a checkout."""
    here = Path(__file__).resolve().parents[2] / "sample_data"
    return here if (here / "test").is_dir() else None


def simulation_federation_id(seed: int) -> str:
    """The simulated federation's id, from the run's seed: sites draw their DP noise from the
    seed and the federation's id (fedxray.training.replay), so a random id (a real federation
    has one, fedxray.plan) would make every run with the same --seed draw other noise."""
    return hashlib.sha256(f"fedxray-simulation\0{int(seed)}".encode()).hexdigest()[:32]


@dataclass
class SimulationConfig:
    """A simulated run: where, on which data, and the plan's options (fedxray.settings.OPTIONS)."""

    out: Path
    data: Path | None = None
    sites: int | None = None
    dp: bool = True
    drops: dict[int, set[str]] = field(default_factory=dict)  # round -> dropped site names
    skew: float | None = None
    seed: int = 0
    # The plan's own defaults, the same as `fedxray init`'s: None where they depend on the
    # model (fedxray.settings_options.PER_MODEL), which then sets them.
    model: str = option_default("model")
    image_size: int | None = None
    geometry: str = option_default("geometry")
    local_epochs: int | None = None
    rounds: int | None = None
    lr: float | None = None
    full_batch: bool | None = None
    bias_lr: float | None = None
    centering: bool | None = None
    strict: bool = option_default("strict")
    epsilon: float = option_default("epsilon")
    delta: float = option_default("delta")
    batch_size: int = option_default("batch_size")
    clip_norm: float = option_default("clip_norm")
    min_sites: int = option_default("min_sites")
    server_opt: str = option_default("server_opt")
    server_lr: float = option_default("server_lr")
    privacy_unit: str = option_default("privacy_unit")
    class_weights: str | None = option_default("class_weights")  # as the option: "1,2,2"
    augment: bool = option_default("augment")
    ema: float = option_default("ema")
    average_last: int = option_default("average_last")
    holdout: float = 0.15
    bootstrap: int = 1000
    workers: int | None = None
    device: str = "cpu"
    init_weights: Path | None = None  # pretrained weights for init (fedxray init --init)
    # The one-run canary audit at the first site: K canaries, coins from canary_seed or the OS.
    audit_canaries: int = 0
    canary_seed: int | None = None


@dataclass
class RoundRecord:
    round: int
    sites: dict[str, dict]  # name -> loss, epsilon, seconds, examples
    dropped: list[str]
    seconds: dict[str, float]  # train, mask, aggregate, reveal, unmask
    courier_bytes: int
    metrics: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


Event = Callable[[str, dict], None]


class Simulation:
    """One simulated federation in ``config.out``; ``run()`` drives every round."""

    def __init__(self, config: SimulationConfig, on_event: Event | None = None):
        self.cfg = config
        self.root = config.out
        self.coord_dir = self.root / COORDINATOR_DIR
        self.eval_dir = self.root / EVALUATION_DIR
        self.courier = Courier(self.root / "courier.log")
        self.emit = on_event or (lambda kind, info: None)
        self.site_names: list[str] = []
        self.rounds: list[RoundRecord] = []

    # --- set-up ------------------------------------------------------------------------------
    def _site_dir(self, name: str) -> Path:
        return self.root / SITES_DIR / name

    def _settings(self) -> FederationSettings:
        """The plan's settings from the options, checked before any folder or file exists."""
        cfg = self.cfg
        if cfg.sites is not None and cfg.sites < 2:
            raise FedxrayError(
                f"a federation needs at least 2 sites, got {cfg.sites}", option="sites"
            )
        options = {k: getattr(cfg, k) for k in OPTIONS if hasattr(cfg, k)}
        settings = settings_from_options(**options, allow_no_dp=not cfg.dp)
        settings.check(cfg.sites)
        self.pixels = {"image_size": settings.model.image_size, "geometry": settings.model.geometry}
        self.total_rounds = settings.training.rounds
        self.local_epochs = settings.training.local_epochs  # the model's default when not set
        self.centring = settings.training.centering  # round 1 releases the mean feature
        return settings

    def _prepare_folders(self, undo: Undo) -> None:
        if self.root.is_file() or (self.root.is_dir() and any(self.root.iterdir())):
            raise FedxrayError(
                f"run folder {self.root} is not empty", hint="choose a new one", option="output"
            )
        undo.folder(self.root)
        make_folder(self.coord_dir)
        make_folder(self.eval_dir)

    def _site_data(self) -> tuple[list[tuple[str, list[Path] | Shard]], list[Path] | Shard]:
        """Per site: either folders it preps itself, or a pre-split shard; plus held-out data."""
        from fedxray.data.prep import prepare

        cfg = self.cfg
        data = cfg.data or default_sample_data()
        if data is None:
            raise FedxrayError(
                "no sample data found next to the package", hint="name a folder", option="data"
            )
        hospitals = sorted(p for p in data.glob("hospital-*") if p.is_dir())
        if cfg.data is None or (hospitals and (data / "test").is_dir()):
            if cfg.sites not in (None, len(hospitals)):
                raise FedxrayError(
                    f"{data} has {len(hospitals)} hospital folders; the number of sites must match",
                    hint="or use a plain folder of images, to be split",
                    option="sites",
                )
            return [(h.name, [h]) for h in hospitals], [data / "test"]
        # A plain folder: prep once, hold out patients, split the rest by patient. Pseudonyms
        # keyed by the seed keep the split (which sorts patients) the same from run to run.
        secret = hashlib.sha256(f"fedxray-simulation/{cfg.seed}".encode()).digest()
        shard, _ = prepare(
            [data],
            **self.pixels,
            classes=DEFAULT_CLASSES,
            secret=secret,
            workers=cfg.workers,
        )
        train, held = holdout_split(shard, cfg.holdout, cfg.seed)
        parts = split_sites(train, cfg.sites or 3, cfg.seed, cfg.skew)
        return [(f"site-{i + 1}", part) for i, part in enumerate(parts)], held

    def setup(self) -> None:
        from fedxray.data.prep import prepare
        from fedxray.simulation.canaries import plant_canaries
        from fedxray.steps.init import initialise

        cfg = self.cfg
        settings = self._settings()
        site_data, held = self._site_data()
        self.site_names = [name for name, _ in site_data]
        unknown = {s for names in cfg.drops.values() for s in names} - set(self.site_names)
        if unknown:
            raise FedxrayError(
                f"dropouts name unknown site(s): {', '.join(sorted(unknown))}",
                hint=f"sites: {', '.join(self.site_names)}",
                option="drop",
            )
        # Each site: keygen, prep its own data (or receive its split), send its card.
        for name, source in site_data:
            folder = self._site_dir(name)
            folder.mkdir(parents=True)
            ident = create_identity(name, folder).identity
            if isinstance(source, Shard):
                shard = source
            else:
                shard, _ = prepare(source, **self.pixels, classes=DEFAULT_CLASSES,
                                   secret=site_secret(ident), workers=cfg.workers)  # fmt: skip
            if cfg.audit_canaries and name == self.site_names[0]:
                shard, planted = plant_canaries(
                    shard, cfg.audit_canaries, folder, name, cfg.canary_seed
                )
                self.emit("canaries", planted)
            write_shard(folder / f"{name}.shard", shard)
            self.courier.carry(folder / f"{name}.pub", self.coord_dir)
            self.emit("site", {"site": name, "images": len(shard), "patients": shard.num_patients})
        # Held-out evaluation data lives with an evaluation party, never with the coordinator.
        if not isinstance(held, Shard):
            held, _ = prepare(held, **self.pixels, classes=DEFAULT_CLASSES, workers=cfg.workers)
        write_shard(self.eval_dir / "test.shard", held)
        # Coordinator: init from the cards it received.
        cards = [self.coord_dir / INBOX / f"{n}.pub" for n in self.site_names]
        res = initialise(
            FEDERATION_NAME, self.coord_dir, cards, settings,
            init_weights=cfg.init_weights, seed=cfg.seed,
            federation_id=simulation_federation_id(cfg.seed),
        )  # fmt: skip
        self.plan_path, self.model_path = res.plan_path, res.model_path
        for name in self.site_names:
            self.courier.carry(self.plan_path, self._site_dir(name))
            self.courier.carry(self.model_path, self._site_dir(name), 1)
        self.emit("init", {"sites": self.site_names, "plan": str(self.plan_path)})

    # --- one round ---------------------------------------------------------------------------
    def run_round(self, r: int) -> RoundRecord:
        """Every site trains and masks, the coordinator sums, the survivors reveal, the
        coordinator unmasks; the evaluation party scores the next model."""
        dropped = sorted(self.cfg.drops.get(r, set()))
        seconds = {"train": 0.0, "mask": 0.0, "aggregate": 0.0, "reveal": 0.0, "unmask": 0.0}
        site_info: dict[str, dict] = {}
        masked_files = []
        start = {"round": r, "sites": self.site_names, "dropped": dropped}
        plan = {"rounds": self.total_rounds, "local_epochs": self.local_epochs}  # resolved
        self.emit("round-start", {**start, **plan, "centring": self.centring and r == 1})
        for name in self.site_names:
            site_info[name], masked = self._site_round(name, r, name in dropped, seconds)
            if masked is not None:
                masked_files.append(self.courier.carry(masked, self.coord_dir, r))
            self.emit("site-round", {"round": r, "site": name, **site_info[name]})
        next_path, published = self._coordinator_round(r, masked_files, dropped, seconds)
        for name in self.site_names:
            self.courier.carry(next_path, self._site_dir(name), r + 1)
            if published != next_path:  # the model they would predict with
                self.courier.carry(published, self._site_dir(name), r + 1)
        metrics = self.evaluate(self.courier.carry(published, self.eval_dir, r + 1), n_boot=0)
        rec = RoundRecord(
            r,
            site_info,
            dropped,
            {k: round(v, 3) for k, v in seconds.items()},
            self.courier.bytes_carried(r),
            metrics,
        )
        self.rounds.append(rec)
        self.emit("round", rec.to_dict())
        return rec

    def _site(self, name: str) -> tuple[Path, Plan, keys.PrivateIdentity]:
        folder = self._site_dir(name)
        plan = load_plan(folder / INBOX / self.plan_path.name)
        return folder, plan, keys.load_private_key(folder / f"{name}.key")

    def _site_round(
        self, name: str, r: int, dropped: bool, seconds: dict[str, float]
    ) -> tuple[dict, Path | None]:
        """A site's part: train and mask (a dropped site trains but never delivers)."""
        from fedxray.steps.train_local import train_local

        folder, plan, key = self._site(name)
        t0 = time.perf_counter()
        local = train_local(
            read_input(folder / INBOX / round_file("model", r)),
            folder / f"{name}.shard",
            plan,
            key,
            files=SiteFiles.beside_key(folder / f"{name}.key"),  # SITE.ledger, SITE.record
            dp=self.cfg.dp,
            device=self.cfg.device,
            seed=site_round_seed(self.cfg.seed, self.site_names.index(name), r),
            progress=lambda done, total: self.emit(
                "training", {"round": r, "site": name, "done": done, "total": total}
            ),
            features_progress=lambda done, total: self.emit(
                "features", {"round": r, "site": name, "done": done, "total": total}
            ),
        )
        seconds["train"] += time.perf_counter() - t0
        write_atomic(folder / round_file("update", r, name), local.update, mode=0o600)
        info = local.summary()
        if dropped:
            return {**info, "dropped": True}, None
        t0 = time.perf_counter()
        masked = mask_update(local.update, plan, key, folder)
        seconds["mask"] += time.perf_counter() - t0
        masked_path = folder / round_file("masked", r, name)
        write_atomic(masked_path, masked.data)
        return info, masked_path

    def _coordinator_round(
        self, r: int, masked_files: list[Path], dropped: list[str], seconds: dict[str, float]
    ) -> tuple[Path, Path]:
        """Sum, collect the reveals if a closure is needed, unmask; the next model's path and
        the published model's (the average of the last K global models, or the same)."""
        plan = load_plan(self.plan_path)
        coord_key = keys.load_private_key(self.coord_dir / "coordinator.key")
        t0 = time.perf_counter()
        agg = aggregate(masked_files, plan, coord_key, r, state_dir=self.coord_dir)
        seconds["aggregate"] += time.perf_counter() - t0
        write_atomic(self.coord_dir / round_file("sum", r), agg.sum)
        reveals = []
        if agg.closure is not None:
            closure_path = self.coord_dir / round_file("closure", r)
            write_atomic(closure_path, agg.closure)
            for name in agg.reveal_from:
                folder, site_plan, key = self._site(name)
                carried = self.courier.carry(closure_path, folder, r)
                t0 = time.perf_counter()
                answer = reveal(read_input(carried), site_plan, key, folder)
                seconds["reveal"] += time.perf_counter() - t0
                reveal_path = folder / round_file("reveal", r, name)
                write_atomic(reveal_path, answer.data)
                reveals.append(self.courier.carry(reveal_path, self.coord_dir, r))
        t0 = time.perf_counter()
        nxt = unmask(
            agg.sum,
            reveals,
            plan,
            coord_key,
            read_input(self.coord_dir / round_file("model", r)),
            server_state_path(self.coord_dir, plan),
            state_dir=self.coord_dir,
        )
        seconds["unmask"] += time.perf_counter() - t0
        next_path = self.coord_dir / round_file("model", r + 1)
        published = next_path
        if nxt.averaged is not None:
            published = next_path.with_name(averaged_file(next_path.name))
            write_atomic(published, nxt.averaged)
        write_atomic(next_path, nxt.model)
        return next_path, published

    # --- evaluation --------------------------------------------------------------------------
    def evaluate(self, model_path: Path, n_boot: int) -> dict:
        """The evaluation party's view: the model on the held-out shard."""
        from fedxray.steps.evaluate import evaluate_shard, load_model

        model = load_model(model_path, self.eval_dir / INBOX / self.plan_path.name)
        shard = read_shard(self.eval_dir / "test.shard")
        report = evaluate_shard(
            model, shard, reads=None, n_boot=n_boot, seed=self.cfg.seed, device=self.cfg.device
        )
        return report.to_dict()

    def run(self) -> dict:
        """Every round, then the final evaluation; a run that fails (or is interrupted)
        leaves no run folder behind, so that the same command can simply be run again."""
        self._settings()
        with Undo() as undo:
            self._prepare_folders(undo)
            return self._run()

    def _run(self) -> dict:
        t_start = time.perf_counter()
        self.setup()
        self.courier.carry(self.plan_path, self.eval_dir)
        for r in range(1, self.total_rounds + 1):
            self.run_round(r)
        final_model = self.eval_dir / INBOX / self._final_model_name()
        final = self.evaluate(final_model, n_boot=self.cfg.bootstrap)
        summary = {
            "run_folder": str(self.root),
            "sites": self.site_names,
            "rounds": [r.to_dict() for r in self.rounds],
            "final_model": str(final_model),
            "final_evaluation": final,
            "canary_audit": self._canary_audit() if self.cfg.audit_canaries else None,
            "seconds": round(time.perf_counter() - t_start, 2),
            "settings": _jsonable(self.cfg),  # as given; None: left to the model's default
            "plan_settings": load_plan(self.plan_path).settings.to_dict(),  # what ran
        }
        write_atomic(self.root / "report.json", (json.dumps(summary, indent=1) + "\n").encode())
        return summary

    def _final_model_name(self) -> str:
        """The published final model: the last global model, or the average of the last K."""
        name = round_file("model", self.total_rounds + 1)
        return averaged_file(name) if self.cfg.average_last > 1 else name

    def _canary_audit(self) -> dict:
        """The canary site audits the final model it received, against its own ledger."""
        from fedxray.simulation.canaries import audit_site

        name = self.site_names[0]
        folder = self._site_dir(name)
        inbox = folder / INBOX
        final = inbox / self._final_model_name()
        doc = audit_site(folder, name, final, inbox / self.plan_path.name, self.cfg.device)
        self.emit("canary-audit", doc)
        return doc


def _jsonable(cfg: SimulationConfig) -> dict:
    out = {}
    for k, v in cfg.__dict__.items():
        if isinstance(v, Path):
            v = str(v)
        elif k == "drops":
            v = {str(r): sorted(s) for r, s in v.items()}
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
