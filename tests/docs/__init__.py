"""docs/: the Sphinx build, the tutorial and the examples."""
