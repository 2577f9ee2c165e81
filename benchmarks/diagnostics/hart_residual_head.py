"""What the HART residual diffusion head adds, teacher-forced on real held-out crops.

For N held-out signals: the tokenizer's latent z, its discrete part f_hat (the sum of the
scales' codes) and the true residual z - f_hat; the transformer run on the true tokens (teacher
forcing) gives the head its conditions, and the head samples a residual r at each temperature.
Printed and written as JSON: the energies of the true and the sampled residual, the error
|z - (f_hat + r)|^2 against leaving the residual out, their cosine, and the decoded signal's
MSE to the real one for f_hat, f_hat + r and z (the upper bound):

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/hart_residual_head.py \\
        outputs/generator/camera/hart/seed0 --held-out-bank data/synth-heldout-bank-val \\
        --n 256 --out benchmarks/results/hart_camera_seed0_residual_head.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from perception.benchmarks.report import provenance, with_provenance
from perception.generative.bank import ObjectBank
from perception.generative.crops import bank_signals
from perception.generative.registry import load_any_generator


@torch.no_grad()
def measure(work: str, bank: str, *, n: int, temperatures: list[float], seed: int) -> dict:
    loaded = load_any_generator(work)
    if loaded.kind != "hart" or loaded.model.residual_head is None:
        raise SystemExit(f"{work}: not a HART generator with a residual head")
    model = loaded.model.eval()
    signals = bank_signals(ObjectBank.open(bank), loaded.config.data, progress=False)
    x = signals.signals[:n]  # [N, C, S, S]
    conds = signals.conditions.index(slice(0, len(x)))
    z = model.tokenizer.encode(x)  # [N, D, G, G]
    indices = model.quantizer.encode_indices(z)
    f_hat = model.quantizer.indices_to_latent(indices)
    true = z - f_hat
    cond = model.condition(conds, torch.zeros(len(x), dtype=torch.bool))
    _, hidden = model.transformer(cond, model.quantizer.teacher_forcing_inputs(indices))
    head_cond = model.head_condition(hidden[:, -indices[-1].shape[1] :], indices[-1])
    B, D, G, _ = z.shape

    def decoded_mse(latent: torch.Tensor) -> float:
        return float((model.tokenizer.decode(latent).clamp(-1, 1) - x).pow(2).mean())

    out = {
        "generator": str(work),
        "held_out_bank": str(bank),
        "num_signals": len(x),
        "true_residual_energy": float(true.pow(2).mean()),
        "decoded_mse": {"discrete_only": decoded_mse(f_hat), "true_residual": decoded_mse(z)},
        "temperatures": {},
    }
    for t in temperatures:
        tokens = model.residual_head.sample(
            head_cond, temperature=t, generator=torch.Generator().manual_seed(seed)
        )  # [B*G*G, D]
        r = tokens.reshape(B, G * G, D).transpose(1, 2).reshape(B, D, G, G) * model.residual_scale
        out["temperatures"][f"{t:g}"] = {
            "sampled_residual_energy": float(r.pow(2).mean()),
            "latent_error_with": float((true - r).pow(2).mean()),
            "latent_error_without": float(true.pow(2).mean()),
            "cosine_to_true": float(F.cosine_similarity(true.flatten(1), r.flatten(1)).mean()),
            "decoded_mse": decoded_mse(f_hat + r),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", help="a HART generator's work dir")
    parser.add_argument("--held-out-bank", required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--temperatures", default="0,1", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON to write (the results layout)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    result = with_provenance(
        measure(args.work, args.held_out_bank, n=args.n, temperatures=temperatures,
                seed=args.seed),
        provenance(),
    )  # fmt: skip
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
