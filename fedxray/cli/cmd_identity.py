"""keygen and init: identities and the federation plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import ForceOpt, JsonOpt, QuietOpt, Ui, start
from fedxray.settings import option_default, settings_from_options
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
    ],
}


def keygen(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The site's name, e.g. hospital-a.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for NAME.key and NAME.pub.")
    ] = Path("."),
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a site identity: NAME.key (private, mode 0600) and NAME.pub (public site card).

    Send NAME.pub to the coordinator and read the fingerprint to them by phone. NAME.key never
    leaves the site and is never overwritten.
    """
    ui = start(quiet, json_out)
    ident = create_identity(name, output)

    def render() -> None:
        ui.info(
            f"wrote {ident.key_path} (private: keep it here) and {ident.card_path} (send it to "
            "the coordinator)"
        )
        ui.info(f"fingerprint: {ident.fingerprint}")

    ui.done(ident.to_dict(), render)


def init(
    cards: Annotated[
        list[Path], typer.Argument(metavar="SITE.pub", help="The sites' public cards (.pub).")
    ],
    name: Annotated[str, typer.Option("--name", help="Federation name; names the .plan file.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Coordinator folder (created if missing).")
    ],
    model: Annotated[
        str, typer.Option("--model", help="Model: smallcnn, tinycnn or resnet18.")
    ] = option_default("model"),
    image_size: Annotated[
        int, typer.Option("--image-size", help="Input size in pixels.")
    ] = option_default("image_size"),
    classes: Annotated[
        str, typer.Option("--classes", help="Comma-separated class names.")
    ] = option_default("classes"),
    rounds: Annotated[
        int, typer.Option("--rounds", help="Number of federated rounds.")
    ] = option_default("rounds"),
    local_epochs: Annotated[
        int, typer.Option("--local-epochs", help="Epochs per round.")
    ] = option_default("local_epochs"),
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Expected batch size.")
    ] = option_default("batch_size"),
    lr: Annotated[float, typer.Option("--lr", help="Local learning rate.")] = option_default("lr"),
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Privacy budget per site.")
    ] = option_default("epsilon"),
    delta: Annotated[float, typer.Option("--delta", help="Privacy delta.")] = option_default(
        "delta"
    ),
    clip_norm: Annotated[
        float, typer.Option("--clip-norm", help="DP-SGD per-example clipping norm.")
    ] = option_default("clip_norm"),
    allow_no_dp: Annotated[
        bool, typer.Option("--allow-no-dp", help="Accept non-private (--no-dp) updates.")
    ] = option_default("allow_no_dp"),
    min_sites: Annotated[
        int, typer.Option("--min-sites", help="Fewest sites per round.")
    ] = option_default("min_sites"),
    strict: Annotated[
        bool, typer.Option("--strict", help="Double masking: a second small trip each round.")
    ] = option_default("strict"),
    server_opt: Annotated[
        str, typer.Option("--server-opt", help="fedavg, momentum or fedadam.")
    ] = option_default("server_opt"),
    server_lr: Annotated[
        float, typer.Option("--server-lr", help="Server learning rate.")
    ] = option_default("server_lr"),
    init_weights: Annotated[
        Path | None,
        typer.Option("--init", help="Start from pretrained weights (a .safetensors file)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for the initial model.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a federation: coordinator key and card, signed plan, and round 1's global model.

    Writes DIR/coordinator.key (kept if it already exists), DIR/coordinator.pub, DIR/NAME.plan
    and DIR/round-0001.model. Send NAME.plan and round-0001.model to every site.
    """
    from fedxray.steps.init import initialise

    ui = start(quiet, json_out)
    settings = settings_from_options(
        model=model,
        image_size=image_size,
        classes=[c.strip() for c in classes.split(",") if c.strip()],
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        epsilon=epsilon,
        delta=delta,
        clip_norm=clip_norm,
        allow_no_dp=allow_no_dp,
        strict=strict,
        server_opt=server_opt,
        server_lr=server_lr,
        min_sites=min_sites,
    )
    res = initialise(
        name, output, cards, settings, init_weights=init_weights, seed=seed, force=force
    )
    ui.done(res.to_dict(), lambda: _render_init(ui, res, name))


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
    ui.info(f"wrote {res.plan_path} and {res.model_path}; send both to every site")


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
    app.command("init")(init)
