"""The estimators' arithmetic: functions of the particles' record
(:class:`~pyro_vi.particles.Particles`) alone."""

__all__ = []
