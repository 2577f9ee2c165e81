"""Training the DiffAugment GAN (`tools/train_generator.py --kind gan`).

Each step: a D step on a real batch and as many fakes (reals and fakes augmented by DiffAugment
as `augment.mode` says, hinge or non-saturating loss, lazy R1 on the reals every
`loss.r1_every` steps), a G step on fresh fakes (augmented under mode "both", gradients flowing
through the augmentation), then the EMA update of G. The fakes take the real batch's
conditions (the conditions' training distribution).

One Adam holds both networks as two parameter groups ("generator" at `g_lr`, "discriminator"
at `d_lr`): each step clears all gradients (to None) and back-propagates into one network only
(G's fakes are detached in the D step, D's weights are frozen in the G step), and Adam skips
parameters without a gradient, so this is exactly two Adams, and the engine's checkpoint (one
optimizer) holds both states.

Work dir layout::

    WORK/config.yaml                 the resolved GANConfig
    WORK/conditions.json             the training conditions' range (checked at sampling)
    WORK/log.jsonl                   one line per `train.log_every` steps (stage "gan"): d_real,
                                     d_fake, r_t = E[sign D(real)], loss_d, loss_g, r1,
                                     augment_probability; kid / kid_std every `kid_every`
    WORK/classifier.safetensors      the crop classifier of the logged KID (unless
                                     `train.classifier` names one)
    WORK/gan/checkpoints/...         G, D, EMA G (one GAN module) + the Adam of both: the latest
                                     is the final generator
    WORK/best/checkpoints/...        the checkpoint of the lowest logged KID

`resume=True` continues from the latest checkpoint at the same step and draws: every step's
batch rows, flips, noise and augmentation come from a generator seeded with (seed, step), and
the ADA probability and its running r_t are saved with the checkpoint, so a resumed run is the
uninterrupted run bit for bit (same device and thread count).

Device (`train.device`, `train.amp`, or train_gan's `device=`): G, D, EMA G and the KID classifier
live on the device; the training signals stay on the CPU and each step's batch moves there. All
draws (rows, flips, z, DiffAugment) come from the CPU step generator and move to the device, so a
CUDA run draws the CPU run's numbers; `train.amp` runs the D and G steps' forward passes (and R1)
under bfloat16 autocast on CUDA (ignored on the CPU, with a logged note). CPU runs are bit-identical
to runs before the device option existed; CUDA runs are not bit-exact. Checkpoints are saved on the
CPU (safetensors), so a CUDA-trained GAN samples on the CPU and vice versa.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ...checkpoint import find_latest, load_checkpoint, save_checkpoint
from ...config import save_config
from ...engine.trainer import seed_everything
from ...structures.classes import CLASS_NAMES
from ..conditions import ConditionRange, ObjectConditions
from ..hart.train import (
    CLASSIFIER_NAME,
    CONDITIONS_NAME,
    LOG_NAME,
    SignalSet,
    autocast,
    flip_batch,
    load_trained,
    load_training_signals,
    resolve_device,
    training_device,
)
from ..metrics import (
    CropClassifier,
    kernel_inception_distance,
    load_crop_classifier,
    save_crop_classifier,
    train_crop_classifier,
)
from .config import GANConfig
from .diffaugment import DiffAugment
from .model import (
    GAN,
    build_gan,
    discriminator_adversarial_loss,
    ema_update,
    generator_adversarial_loss,
    r1_penalty,
    sample_gan,
)

__all__ = [
    "STAGE",
    "ada_update",
    "build_augment",
    "build_optimizer",
    "discriminator_losses",
    "generator_losses",
    "gan_kid",
    "load_gan",
    "select_signals",
    "train_gan",
    "train_step",
]

STAGE = "gan"
BEST_NAME = "best"

# augment(x [B,C,S,S], *, probability, generator) -> [B,C,S,S]; a DiffAugment module
Augment = Callable[..., Tensor]


def build_augment(config: GANConfig) -> DiffAugment:
    """The config's DiffAugment (the modality's default policy when none is given)."""
    a = config.augment
    return DiffAugment(
        config.policy,
        translation_ratio=a.translation_ratio,
        cutout_ratio=a.cutout_ratio,
        color_channels=config.color_channels,
    )


def _randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def discriminator_losses(
    gan: GAN,
    reals: Tensor,
    conds: ObjectConditions,
    *,
    augment: Augment,
    mode: str = "both",
    loss_kind: str = "hinge",
    r1_weight: float = 0.0,
    probability: float = 1.0,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """The D step's losses on reals [B,C,S,S] and B fakes of the same conditions.

    `mode` "both" augments reals and fakes, "reals_only" only the reals, "none" neither.
    `r1_weight` > 0 adds `r1_weight * r1_penalty` (gradient w.r.t. the un-augmented reals).
    Returns {"total", "loss_d", "d_real", "d_fake", "r_t"} (+ "r1"), scalars; only "total" and
    "loss_d" carry gradients (into D only: the fakes are detached).
    """
    B = reals.shape[0]
    with torch.no_grad():
        z = _randn((B, gan.generator.z_dim), generator, reals.device)  # [B, z_dim]
        fakes = gan.generator(z, conds)  # [B, C, S, S]
    real_in = reals.detach().requires_grad_(r1_weight > 0)  # [B, C, S, S]
    real_seen = real_in
    fake_seen = fakes
    if mode in ("both", "reals_only"):
        real_seen = augment(real_in, probability=probability, generator=generator)
    if mode == "both":
        fake_seen = augment(fakes, probability=probability, generator=generator)
    elif mode not in ("none", "reals_only"):
        raise ValueError(f"augment.mode: unknown {mode!r} (both, none, reals_only)")
    # float32 logits (no-ops without autocast): the loss, its logged values and R1 in fp32
    d_real = gan.discriminator(real_seen, conds).float()  # [B]
    d_fake = gan.discriminator(fake_seen, conds).float()  # [B]
    loss = discriminator_adversarial_loss(d_real, d_fake, loss_kind)
    out = {
        "loss_d": loss,
        "d_real": d_real.detach().mean(),
        "d_fake": d_fake.detach().mean(),
        "r_t": d_real.detach().sign().mean(),
    }
    total = loss
    if r1_weight > 0:
        r1 = r1_penalty(d_real, real_in)
        out["r1"] = r1.detach()
        total = total + r1_weight * r1
    out["total"] = total
    return out


def generator_losses(
    gan: GAN,
    conds: ObjectConditions,
    *,
    augment: Augment,
    mode: str = "both",
    loss_kind: str = "hinge",
    probability: float = 1.0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """The G step's loss on B = len(conds) fresh fakes, augmented only under mode "both"
    (gradients flow through the augmentation and D into G). Returns {"total", "loss_g"}."""
    z = _randn((len(conds), gan.generator.z_dim), generator, torch.device(device))
    fakes = gan.generator(z, conds)  # [B, C, S, S]
    if mode == "both":
        fakes = augment(fakes, probability=probability, generator=generator)
    elif mode not in ("none", "reals_only"):
        raise ValueError(f"augment.mode: unknown {mode!r} (both, none, reals_only)")
    loss = generator_adversarial_loss(gan.discriminator(fakes, conds).float(), loss_kind)
    return {"total": loss, "loss_g": loss}


def ada_update(
    probability: float, r_t: float, *, target: float, images: int, ada_images: int
) -> float:
    """StyleGAN2-ADA's rule: p moves by `images / ada_images` toward more augmentation when the
    overfitting heuristic `r_t` is above `target`, toward less below it; clamped to [0, 1]."""
    step = math.copysign(images / ada_images, r_t - target) if r_t != target else 0.0
    return min(max(probability + step, 0.0), 1.0)


def select_signals(data: SignalSet, config: GANConfig) -> SignalSet:
    """The training signals: every class of `data.classes` must have some, and `num_real`
    (when given) of them drawn once with `subset_seed`."""
    counts = torch.bincount(data.conditions.label, minlength=len(CLASS_NAMES))
    for name in config.data.classes or []:
        if counts[CLASS_NAMES.index(name)] == 0:
            raise ValueError(
                f"data.classes: {name!r} has no {config.data.modality} signal in "
                f"{config.data.bank} (classes with some: "
                f"{[CLASS_NAMES[i] for i in counts.nonzero()[:, 0].tolist()]})"
            )
    n = config.train.num_real
    if n is None:
        return data
    if n > len(data):
        raise ValueError(
            f"train.num_real: {n} is more than the {len(data)} {config.data.modality} signals "
            f"of {config.data.bank}"
        )
    rows = torch.randperm(
        len(data), generator=torch.Generator().manual_seed(config.train.subset_seed)
    )
    rows = rows[:n].sort().values
    return SignalSet(data.signals[rows], data.conditions.index(rows), data.object_index[rows])


def gan_kid(
    gan: GAN,
    reals: Tensor,
    conds: ObjectConditions,
    classifier: CropClassifier,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[float, float]:
    """KID (mean, std) of EMA-G samples for `conds` (noise seeded by `seed`) against `reals`
    [N,C,S,S], in the classifier's features: 10 subsets of N // 2 (at least 2)."""
    generator = torch.Generator().manual_seed(seed)
    fakes = torch.cat(
        [
            sample_gan(gan, conds.index(slice(i, i + batch_size)), generator=generator).signals
            for i in range(0, len(conds), batch_size)
        ]
    ).to(reals.device)
    return kernel_inception_distance(
        reals, fakes, classifier, subsets=10, subset_size=max(2, len(reals) // 2), seed=seed
    )


def train_step(
    gan: GAN,
    optimizer: torch.optim.Optimizer,
    reals: Tensor,
    conds: ObjectConditions,
    *,
    augment: Augment,
    config: GANConfig,
    step: int,
    probability: float = 1.0,
    generator: torch.Generator,
    amp: bool = False,
) -> dict[str, float]:
    """One training step on reals [B,C,S,S] (step counted from 0): the D step (with lazy R1
    when `step % r1_every == 0`, weighted by r1_every), the G step (D frozen: no gradient
    reaches its weights, so the shared Adam leaves them), the EMA update. `optimizer` holds
    G's and D's parameters. `amp`: the losses' forward passes under bfloat16 autocast (CUDA
    reals only). Returns the logged values (d_real, d_fake, r_t, loss_d, loss_g, r1 on R1
    steps) as floats."""
    aug, loss_cfg, train = config.augment, config.loss, config.train
    G, D = gan.generator, gan.discriminator
    do_r1 = loss_cfg.r1_gamma > 0 and step % loss_cfg.r1_every == 0
    with autocast(reals.device, amp):
        d_out = discriminator_losses(
            gan,
            reals,
            conds,
            augment=augment,
            mode=aug.mode,
            loss_kind=loss_cfg.kind,
            r1_weight=loss_cfg.r1_gamma / 2 * loss_cfg.r1_every if do_r1 else 0.0,
            probability=probability,
            generator=generator,
        )
    optimizer.zero_grad(set_to_none=True)
    d_out["total"].backward()
    optimizer.step()

    D.requires_grad_(False)
    try:
        with autocast(reals.device, amp):
            g_out = generator_losses(
                gan,
                conds,
                augment=augment,
                mode=aug.mode,
                loss_kind=loss_cfg.kind,
                probability=probability,
                generator=generator,
                device=reals.device,
            )
        optimizer.zero_grad(set_to_none=True)
        g_out["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        D.requires_grad_(True)
    ema_update(gan.generator_ema, G, train.ema_decay if step >= train.ema_start else 0.0)
    return {k: float(v.detach()) for k, v in {**d_out, **g_out}.items() if k != "total"}


def build_optimizer(gan: GAN, config: GANConfig) -> torch.optim.Adam:
    """One Adam, two parameter groups: "generator" (g_lr) and "discriminator" (d_lr)."""
    train = config.train
    return torch.optim.Adam(
        [
            {"params": list(gan.generator.parameters()), "lr": train.g_lr, "name": "generator"},
            {
                "params": list(gan.discriminator.parameters()),
                "lr": train.d_lr,
                "name": "discriminator",
            },
        ],
        betas=train.betas,
    )


def _append_log(work_dir: Path, record: dict) -> None:
    with (work_dir / LOG_NAME).open("a") as f:
        f.write(json.dumps(record) + "\n")


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + 77_000_041 + step)


def _classifier(
    config: GANConfig, data: SignalSet, work_dir: Path, resume: bool, progress: bool, log
) -> CropClassifier | None:
    """The KID feature extractor: `train.classifier`, else one trained on all the bank's
    signals (before `num_real`) and saved in the work dir, else None (no KID)."""
    train = config.train
    if train.kid_every == 0 or len(data) < 4:
        return None
    if train.classifier is not None:
        classifier = load_crop_classifier(train.classifier)
        classifier.check_images(data.signals[:1], "the training signals (for train.classifier)")
        log(f"classifier: loaded {train.classifier}")
    elif train.classifier_steps > 0:
        path = work_dir / CLASSIFIER_NAME
        if resume and path.is_file():
            classifier = load_crop_classifier(path)
            log(f"classifier: loaded {path}")
        else:
            classifier = train_crop_classifier(
                data.signals,
                data.conditions.label,
                data.conditions.view_angle,
                steps=train.classifier_steps,
                batch_size=train.batch_size,
                generator=torch.Generator().manual_seed(train.seed),
                progress=progress,
            )
            save_crop_classifier(classifier, path)
    else:
        return None
    return classifier.eval().requires_grad_(False)


def _best_kid(best_dir: Path) -> float:
    latest = find_latest(best_dir)
    if latest is None:
        return math.inf
    state = json.loads((latest / "training_state.json").read_text())
    return float(state.get("extra", {}).get("kid", math.inf))


def train_gan(
    config: GANConfig,
    work_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str | torch.device | None = None,
) -> Path:
    """Trains the GAN `config` describes into `work_dir`; returns the final checkpoint
    directory (WORK/gan/checkpoints/step_<steps>). `device` (None: `train.device`) overrides
    the config's device ("auto", "cpu", "cuda" or a torch device); `train.amp` applies on
    CUDA."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    train, aug = config.train, config.augment
    if device is None:
        device, amp = training_device(train, log)
    else:  # the caller's device (e.g. a tool's --device) over the config's
        if isinstance(device, str) and device in ("auto", "cpu", "cuda"):
            device = resolve_device(str(device), field="device")
        device = torch.device(device)
        amp = train.amp and device.type == "cuda"
        if train.amp and not amp:
            log(f"note: train.amp is ignored on {device.type} (bfloat16 autocast is CUDA only)")
    save_config(config, work_dir / "config.yaml")
    seed_everything(train.seed)
    bank_data = load_training_signals(config.data, progress=progress)
    data = select_signals(bank_data, config)
    counts = torch.bincount(data.conditions.label).tolist()
    log(
        f"{config.name}: {len(data)} of {len(bank_data)} {config.data.modality} signals "
        f"{tuple(data.signals.shape[1:])} from {config.data.bank} "
        f"(per class: { {CLASS_NAMES[i]: c for i, c in enumerate(counts) if c} }); "
        f"augment {aug.mode} {config.policy!r}"
    )
    ranges = ConditionRange.fit(data.conditions)
    (work_dir / CONDITIONS_NAME).write_text(json.dumps(ranges.to_dict(), indent=1))
    classifier = _classifier(config, bank_data, work_dir, resume, progress, log)
    if len(data) < 4:  # KID needs two subsets of at least 2
        classifier = None
    if classifier is not None:
        classifier.to(device)
    kid_rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(train.seed))
    kid_rows = kid_rows[: train.kid_subset]
    kid_reals = data.signals[kid_rows].to(device)
    kid_conds = data.conditions.index(kid_rows)

    seed_everything(train.seed)  # the initial weights do not depend on the classifier's steps
    gan = build_gan(config).to(device).train()
    optimizer = build_optimizer(gan, config)
    augment = build_augment(config)
    gan_dir, best_dir = work_dir / STAGE, work_dir / BEST_NAME
    start = 0
    probability = 0.0 if aug.ada_target is not None else 1.0
    ada_sum, ada_count = 0.0, 0
    if resume and find_latest(gan_dir) is not None:
        state = load_checkpoint(gan_dir, model=gan, optimizer=optimizer, schema=GANConfig)
        start = state.step
        probability = float(state.extra["augment_probability"])
        ada_sum, ada_count = float(state.extra["ada_sum"]), int(state.extra["ada_count"])
        log(f"{STAGE}: resumed at step {start} from {state.path}")
    best_kid = _best_kid(best_dir) if resume else math.inf
    conditions_extra = json.loads((work_dir / CONDITIONS_NAME).read_text())

    bar = tqdm(total=train.steps, initial=start, desc=STAGE, disable=not progress, unit="step")
    sums: dict[str, float] = {}
    count, tic = 0, time.perf_counter()
    for step in range(start, train.steps):
        generator = _step_generator(train.seed, step)
        B = min(train.batch_size, len(data))
        rows = torch.randint(len(data), (B,), generator=generator)
        reals, conds = data.signals[rows], data.conditions.index(rows)
        if config.data.flip:
            reals, conds = flip_batch(reals, conds, torch.rand(B, generator=generator) < 0.5)
        reals, conds = reals.to(device), conds.to(device)

        values = train_step(
            gan,
            optimizer,
            reals,
            conds,
            augment=augment,
            config=config,
            step=step,
            probability=probability,
            generator=generator,
            amp=amp,
        )
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(
                f"{STAGE} step {step}: a loss is not finite ({values}); the last good "
                f"checkpoint is {find_latest(gan_dir)}"
            )
        if aug.ada_target is not None:
            ada_sum, ada_count = ada_sum + values["r_t"], ada_count + 1
            if ada_count == aug.ada_interval:
                probability = ada_update(
                    probability,
                    ada_sum / ada_count,
                    target=aug.ada_target,
                    images=B * ada_count,
                    ada_images=aug.ada_images,
                )
                ada_sum, ada_count = 0.0, 0
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        sums["r1_steps"] = sums.get("r1_steps", 0.0) + float("r1" in values)
        count += 1
        bar.update(1)
        done = step + 1
        record: dict = {}
        if done % train.log_every == 0 or done == train.steps:
            r1_steps = sums.pop("r1_steps")
            r1 = sums.pop("r1", None)
            record = {"stage": STAGE, "step": done, **{k: v / count for k, v in sums.items()}}
            if r1 is not None:
                record["r1"] = r1 / r1_steps
            record["augment_probability"] = probability
            record["seconds_per_step"] = (time.perf_counter() - tic) / count
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("d_real", "d_fake", "r_t")})
            sums, count, tic = {}, 0, time.perf_counter()
        extra = {
            "stage": STAGE,
            "conditions": conditions_extra,
            "augment_probability": probability,
            "ada_sum": ada_sum,
            "ada_count": ada_count,
        }
        if classifier is not None and (done % train.kid_every == 0 or done == train.steps):
            kid, kid_std = gan_kid(gan, kid_reals, kid_conds, classifier, seed=train.seed)
            record = record or {"stage": STAGE, "step": done}
            record.update(kid=kid, kid_std=kid_std)
            if kid < best_kid:
                best_kid = kid
                save_checkpoint(
                    best_dir,
                    step=done,
                    model=gan,
                    config=config,
                    extra={**extra, "kid": kid},
                    keep=1,
                )
            tic = time.perf_counter()  # KID time is not a step's
        if record:
            _append_log(work_dir, record)
        if done % train.checkpoint_every == 0 or done == train.steps:
            save_checkpoint(
                gan_dir, step=done, model=gan, optimizer=optimizer, config=config, extra=extra
            )
    bar.close()
    latest = find_latest(gan_dir)
    log(
        f"trained generator: {latest}"
        + (
            f" (best KID {best_kid:.4g}: {find_latest(best_dir)})"
            if math.isfinite(best_kid)
            else ""
        )
    )
    return latest


def load_gan(path: str | Path) -> tuple[GAN, GANConfig, ConditionRange]:
    """The GAN of a checkpoint directory, a checkpoints' parent (WORK/gan, WORK/best) or a
    work dir (its final checkpoint), with its config and training conditions' range; eval
    mode, on the CPU."""
    return load_trained(path, kind="gan", stage=STAGE, schema=GANConfig, build=build_gan)
