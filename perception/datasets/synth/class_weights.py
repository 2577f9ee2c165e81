"""Class weights: worlds where chosen classes are rare in the training scenes.

A class's weight is the share of its instances that a training scene keeps: each annotated
object of the layout (the normal mix) is kept when a uniform draw of its own is below its
class's weight, so weight 1 keeps the class as it is, 0 removes it, and 0.1 leaves about a
tenth. The draws come from a random stream of their own, so the rest of the scene (road,
traffic, clutter, sensors) is the normal world's, and a lower weight keeps a subset of what a
higher one keeps. The generator can only thin a class, not add to it: weights lie in [0, 1].
A thinned training scene may lack a class that `make_layout` otherwise puts in every scene.
Val scenes are never thinned, so rare-class AP is measured on the normal mix.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping

import numpy as np

from perception.datasets.synth.catalog import DETECTION_CLASSES
from perception.datasets.synth.layout import SceneLayout, describe

# The `--rare` preset's weight. A 27-scene training split holds ~90 bicycles and ~60
# construction vehicles, so 0.15 leaves ~13 and ~9 (fewer than 20 for almost every seed); the
# 30-scene trainval world of seed 1 keeps 10 and 4 (benchmarks/HISTORY.md, "Rare classes").
RARE_WEIGHT = 0.15


def _valid_classes() -> str:
    return ", ".join(DETECTION_CLASSES)


def validate_class_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Check class weights; returns one weight per detection class (unlisted classes: 1.0),
    in `DETECTION_CLASSES` order. Unknown names and weights outside [0, 1] are errors."""
    for name, weight in weights.items():
        if name not in DETECTION_CLASSES:
            raise ValueError(
                f"class weights: unknown class {name!r}; valid classes: {_valid_classes()}"
            )
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ValueError(f"class weights: {name} must be a number; got {weight!r}")
        if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise ValueError(
                f"class weights: {name} must be between 0 and 1 (the share of its instances "
                f"the training scenes keep; the generator cannot add instances); got {weight}"
            )
    return {name: float(weights.get(name, 1.0)) for name in DETECTION_CLASSES}


def _class_names(text: str, what: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    if not names:
        raise ValueError(f"{what}: no class named in {text!r}")
    return names


def _parse_pairs(text: str) -> dict[str, float]:
    """'car=1,bicycle=0.05' -> {'car': 1.0, 'bicycle': 0.05}, as written (not validated)."""
    weights: dict[str, float] = {}
    for item in _class_names(text, "--class-weights"):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise ValueError(f"--class-weights: {item!r} is not CLASS=WEIGHT")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(
                f"--class-weights: weight of {name} is not a number: {value!r}"
            ) from None
        if name in weights:
            raise ValueError(f"--class-weights: {name} is given twice")
        weights[name] = weight
    return weights


def parse_class_weights(text: str) -> dict[str, float]:
    """'car=1,bicycle=0.05' -> one weight per detection class (unlisted classes 1.0), validated."""
    return validate_class_weights(_parse_pairs(text))


def rare_class_weights(classes: Iterable[str], weight: float = RARE_WEIGHT) -> dict[str, float]:
    """The `--rare` preset: the named classes at `weight`, every other class at 1.0."""
    return validate_class_weights({name: weight for name in classes})


def class_weights_option(class_weights: str | None, rare: str | None) -> dict[str, float] | None:
    """The command line's `--class-weights C=W,...` and `--rare C1,C2` together (None: neither);
    a class may be named in only one of the two."""
    if class_weights is None and rare is None:
        return None
    explicit = {} if class_weights is None else _parse_pairs(class_weights)
    preset = {} if rare is None else dict.fromkeys(_class_names(rare, "--rare"), RARE_WEIGHT)
    both = sorted(set(explicit) & set(preset))
    if both:
        raise ValueError(f"{', '.join(both)} named in both --class-weights and --rare")
    return validate_class_weights({**explicit, **preset})


def thin_layout(
    layout: SceneLayout, weights: Mapping[str, float], rng: np.random.Generator
) -> SceneLayout:
    """The layout with each annotated object kept when rng's draw for it is below its class's
    weight (weights: a full dict from `validate_class_weights`). One draw per object, in order."""
    objects = layout.objects
    draws = rng.random(len(objects))  # [N] in [0, 1): weight 1 keeps all, 0 none
    keep = draws < np.array([weights[det] for det in objects.detection], dtype=np.float64)
    kept = objects.subset(keep)
    return dataclasses.replace(
        layout,
        objects=kept,
        description=describe(layout.drive_side, float(layout.ego.v[0]), kept),
    )
