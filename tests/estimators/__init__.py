"""pyro_vi/estimators/: one module per estimator, and the contracts every estimator keeps."""
