"""Diagnostic of ACAI on the Omniglot subsets: losses and code statistics during the fit.

The fit of `metalab.tasks.acai.fit_acai` (its `acai_fit` parts at the unsupervised table's
budget: 512 hidden units, 32 dims, 1000 Adam steps of 128 images, lr 1e-3) on the table's
unlabelled Omniglot training images, printed every ``--every`` steps: the mean critic and
autoencoder losses, the reconstruction error on all images, the mean per-dimension standard
deviation of the codes over the images (0: constant codes), the fraction of the encoder's
hidden units whose pre-activation is negative for every image ("off"), and the decoder
output's per-pixel standard deviation over the images (0: every image decodes to the same picture).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/acai_collapse.py --seed 0 --activation relu
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/acai_collapse.py --seed 0
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/acai_collapse.py --seed 1 --regulariser 0

Outputs of the runs quoted in docs/unsupervised-meta-learning.md are in
``benchmarks/results/acai_collapse/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from metalab.tasks import acai
from metalab.tasks.embedding_training import fit_steps
from metalab.train.sources import training_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
import unsupervised_table  # noqa: E402  (a sibling script: the table's data and budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--activation", default="leaky_relu", choices=sorted(acai.ACTIVATIONS))
    parser.add_argument("--regulariser", type=float, default=0.5,
                        help="lambda of the autoencoder's critic term (0: a plain autoencoder "
                             "with the same nets and draws; the critic still trains)")
    parser.add_argument("--omniglot-root", default="../shared/data/omniglot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = unsupervised_table.build_parser().parse_args(
        ["--dataset", "omniglot-small", "--omniglot-root", args.omniglot_root,
         "--clusters", "50"])
    config = unsupervised_table.row_config("cactus-protonet", "acai", args.seed, table)
    images = training_images(config["data"]).images
    x = acai.signed(images.reshape(len(images), -1).float())
    print(f"images {tuple(images.shape)}, mean pixel {float(images.mean()):.3f}")
    fit = acai.acai_fit(x, 32, args.seed, lr=args.lr, activation=args.activation,
                        regulariser=args.regulariser)
    nets = fit.nets
    start = time.time()
    for chunk in range(args.steps // args.every):
        history = fit_steps(fit.players, fit.draw, args.every, modules=nets)
        with torch.no_grad():
            hidden = nets.encoder[0](x)
            codes = nets.encoder(x)
            decoded = nets.decoder(codes)
        mean = {name: sum(h[name] for h in history) / len(history) for name in history[0]}
        print(f"step {(chunk + 1) * args.every:5d} L_d {mean['critic']:.4f} "
              f"L_ae {mean['autoencoder']:.4f} "
              f"reconstruction {float((decoded - x).pow(2).mean()):.4f} "
              f"code_std {float(codes.std(0).mean()):.4f} "
              f"units_off {float((hidden.max(0).values <= 0).double().mean()):.3f} "
              f"decoded_std {float(decoded.std(0).mean()):.4f} "
              f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
