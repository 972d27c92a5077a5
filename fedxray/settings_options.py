"""Flat options (as `fedxray init` and `fedxray simulate` name them) to typed settings, and
the options' defaults (:data:`fedxray.settings.OPTIONS` maps each option to its setting)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedxray.model_defaults import MODEL_DEFAULTS, PLUGIN_DEFAULTS
from fedxray.settings import (
    BALANCED,
    OPTIONS,
    FederationSettings,
    SettingError,
    make_settings,
)


def _has(tree: Mapping[str, Any], path: str) -> bool:
    *sections, name = path.split(".")
    for s in sections:
        tree = tree.get(s, {})
    return name in tree


# Options whose default depends on the model (MODEL_DEFAULTS): the commands leave them unset
# unless given, so that ``--model tinycnn`` gets the CNN's defaults, not the recipe's.
PER_MODEL = frozenset(
    option
    for option, path in OPTIONS.items()
    if any(_has(d, path) for d in (*MODEL_DEFAULTS.values(), PLUGIN_DEFAULTS))
)


def option_default(option: str) -> Any:
    """The default of a flat option: the default of the setting it sets (for the default
    model; see PER_MODEL)."""
    value: Any = make_settings()
    for part in OPTIONS[option].split("."):
        value = getattr(value, part)
    return ",".join(value) if isinstance(value, tuple) else value


def settings_from_options(**options: Any) -> FederationSettings:
    """Settings from flat options; an option that is None or absent keeps its default."""
    tree: dict[str, Any] = {}
    for option, value in options.items():
        if option not in OPTIONS:
            raise TypeError(f"unknown option {option!r}")
        if value is None:
            continue
        if option == "class_weights" and isinstance(value, str):
            value = parse_class_weights(value)
        *sections, name = OPTIONS[option].split(".")
        node = tree
        for s in sections:
            node = node.setdefault(s, {})
        node[name] = list(value) if isinstance(value, list | tuple) else value
    return FederationSettings.from_dict(tree)


def parse_class_weights(text: str) -> list[float] | str | None:
    """An option's class weights: ``1,2,2`` (one per class), ``balanced``, or ``none``."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    if text == BALANCED:
        return text
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise SettingError(
            "training.class_weights",
            f"class-weights must be numbers separated by commas, {BALANCED!r} or 'none', "
            f"got {text!r}",
        ) from None
