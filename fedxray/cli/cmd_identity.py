"""keygen and init: identities and the federation plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import PLAN_OPTIONS, Run, Ui, command
from fedxray.settings_options import settings_from_options
from fedxray.steps.identity import create_identity

EXAMPLES = {
    "keygen": [
        ("Create the identity of hospital-a in the current folder", "fedxray keygen hospital-a")
    ],
    "init": [
        (
            "Create a federation of three sites",
            "fedxray init --name pneumo -o coord hospital-a.pub hospital-b.pub hospital-c.pub",
        ),
        (
            "ResNet-18 at 224 px from pretrained weights, 10 rounds, epsilon 6",
            "fedxray init --name pneumo -o coord --model resnet18 --image-size 224 "
            "--init resnet18-gn.safetensors --rounds 10 --epsilon 6 *.pub",
        ),
        (
            "A linear head on torchvision's ImageNet ResNet-18, frozen (weights carried in)",
            "fedxray init --name pneumo -o coord --model resnet18-frozen --image-size 128 "
            "--init resnet18-f37072fd.pth *.pub",
        ),
    ],
}


@command()
def keygen(
    run: Run,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The site's name, e.g. hospital-a.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for NAME.key and NAME.pub.")
    ] = Path("."),
) -> None:
    """Create a site identity: NAME.key (private, mode 0600) and NAME.pub (public site card).

    Send NAME.pub to the coordinator and read the fingerprint to them by phone. NAME.key never
    leaves the site and is never overwritten.
    """
    ident = create_identity(name, output)

    def render() -> None:
        run.ui.info(
            f"wrote {ident.key_path} (private: keep it here) and {ident.card_path} (send it to "
            "the coordinator)"
        )
        run.ui.info(f"fingerprint: {ident.fingerprint}")

    run.done(ident.to_dict(), render)


@command(force=True, plan_options=PLAN_OPTIONS)
def init(
    run: Run,
    cards: Annotated[
        list[Path], typer.Argument(metavar="SITE.pub", help="The sites' public cards (.pub).")
    ],
    name: Annotated[str, typer.Option("--name", help="Federation name; names the .plan file.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Coordinator folder (created if missing).")
    ],
    plan_options: dict | None = None,  # the plan settings, by the decorator
    init_weights: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from pretrained weights: a .safetensors file of the model's own "
            "tensors, or for resnet18-frozen / densenet121-frozen torchvision's state dict "
            "(.pth, read with weights_only, or .safetensors); the plan carries them.",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for the initial model.")] = None,
) -> None:
    """Create a federation: coordinator key and card, signed plan, and round 1's global model.

    Writes DIR/coordinator.key (kept if it already exists), DIR/coordinator.pub, DIR/NAME.plan
    and DIR/round-0001.model. Send NAME.plan and round-0001.model to every site.
    """
    from fedxray.steps.init import initialise

    classes = [c.strip() for c in plan_options["classes"].split(",") if c.strip()]
    settings = settings_from_options(**{**plan_options, "classes": classes})
    res = initialise(
        name, output, cards, settings, init_weights=init_weights, seed=seed, force=run.force
    )
    run.done(res.to_dict(), lambda: _render_init(run.ui, res, name))


def _render_init(ui: Ui, res, name: str) -> None:
    s = res.plan_summary
    for w in res.warnings:
        ui.info(f"warning: {w}")
    ui.table(
        f"federation {name} ({s['federation'][:12]})",
        [(x["name"], x["fingerprint"]) for x in s["sites"]],
        ("site", "fingerprint"),
    )
    ui.info(f"coordinator fingerprint: {s['coordinator']['fingerprint']}")
    p = res.pretrained or {}
    if p.get("frozen"):  # the plan carries the backbone: say which one it pinned
        ui.info(f"frozen backbone {p['backbone']}: weights sha256 {p['sha256']}")
        ui.info(f"  imported from {p['file']} (file sha256 {p['file_sha256']})")
    ui.info(f"wrote {res.plan_path} and {res.model_path}; send both to every site")


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
    app.command("init")(init)
