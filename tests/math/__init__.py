"""pyro_vi/math/: the arithmetic on the particle record."""
