"""`python -m bench train-model digits-unet|digits-classifier`: retrain a shipped network, deterministically.

The shipped weights in bench/assets/digits/ were made with the defaults and `--out bench/assets/digits`
(see the .json record beside each weights file); by default a rerun writes to results/models/digits/ so the
shipped files are not overwritten by accident. Point the `digits` model at other weights with
FEWSTEP_DIGITS_DIR=<dir>.
"""
from __future__ import annotations

import json

import torch

from bench.cli import UsageError

HELP = "train the shipped digits denoiser (EDM UNet) or the FD-digits classifier"
NETWORKS = ("digits-unet", "digits-classifier")
DEFAULT_STEPS = {"digits-unet": 1200, "digits-classifier": 600}
DEFAULT_BATCH = {"digits-unet": 128, "digits-classifier": 128}


def add_arguments(p) -> None:
    p.add_argument("network", help=f"which network: {', '.join(NETWORKS)}")
    p.add_argument("--steps", type=int, help="optimizer steps (default: digits-unet 1200, digits-classifier 600)")
    p.add_argument("--batch-size", type=int, help="batch size (default: digits-unet 128, digits-classifier 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="the one seed for init, batches, noise (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, as the shipped weights were made; results depend on it)")
    p.add_argument("--out", default="results/models/digits",
                   help="output directory (default results/models/digits; the shipped copy is bench/assets/digits)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    from bench.nets import train

    if args.network not in NETWORKS:
        raise UsageError(f"unknown network {args.network!r}; accepted: {', '.join(NETWORKS)}")
    steps = args.steps if args.steps is not None else DEFAULT_STEPS[args.network]
    batch = args.batch_size if args.batch_size is not None else DEFAULT_BATCH[args.network]
    if steps < 1 or batch < 1 or args.lr <= 0 or args.threads < 1:
        raise UsageError("--steps, --batch-size, --threads must be >= 1 and --lr > 0")
    torch.set_num_threads(args.threads)
    if args.network == "digits-unet":
        model, record = train.train_unet(steps=steps, batch_size=batch, lr=args.lr, seed=args.seed,
                                         progress=not args.no_progress)
        config, name = model.config(), "unet"
        summary = {"train_loss": record["final_train_loss"], "heldout_loss_ema": record["final_heldout_loss_ema"]}
    else:
        model, record = train.train_classifier(steps=steps, batch_size=batch, lr=args.lr, seed=args.seed,
                                               progress=not args.no_progress)
        config, name = model.config, "classifier"
        summary = {"heldout_accuracy": record["heldout_accuracy"]}
    record["command"] = (f"python -m bench train-model {args.network} --steps {steps} --batch-size {batch} "
                         f"--lr {args.lr} --seed {args.seed} --threads {args.threads}")
    path = train.save(model, config, record, args.out, name)
    print(json.dumps({"weights": str(path), "steps": steps, "wall_time_s": round(record["wall_time"], 1),
                      **summary}))
    return 0
