"""``python -m experiments.vae_mnist``: the study, with its errors (missing
MNIST, checkpoints of another configuration) as one line."""

import sys

from experiments.vae_mnist import STUDY
from models.mnist import MnistNotFoundError

try:
    STUDY.main()
except (MnistNotFoundError, ValueError) as error:
    sys.exit(f"vae_mnist: error: {error}")
