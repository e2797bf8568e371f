"""pyro_vi/particles/: the run phase, its record and the Pyro internals it relies on."""
