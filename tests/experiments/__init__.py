"""experiments/: the studies, their README blocks and the README itself."""
