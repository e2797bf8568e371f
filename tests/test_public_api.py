"""The public API: what ``pyro_vi`` exports exists, every module states its
``__all__`` and each entry is importable from it, and no attribute of a
package hides one of its submodules (``from pyro_vi.particles import run``
must give the module, whatever the package imports)."""

import importlib
import pkgutil
import sys

import pytest

import pyro_vi

PACKAGES = ("pyro_vi", "pyro_vi.estimators", "pyro_vi.math", "pyro_vi.particles", "pyro_vi.training")


def _modules():
    names = ["pyro_vi"]
    for info in pkgutil.walk_packages(pyro_vi.__path__, "pyro_vi."):
        names.append(info.name)
    return sorted(names)


MODULES = _modules()


def test_the_walk_finds_the_modules():
    assert {"pyro_vi.estimators.iwae", "pyro_vi.particles.run", "pyro_vi.math.bounds", "pyro_vi.optim"} <= set(MODULES)


def test_package_all_names_exist_once():
    assert len(set(pyro_vi.__all__)) == len(pyro_vi.__all__)
    missing = [name for name in pyro_vi.__all__ if not hasattr(pyro_vi, name)]
    assert not missing


def test_package_exports_what_users_need():
    needed = {
        # every estimator, and the pieces to write one
        "ControlVariateELBO",
        "DisARMELBO",
        "ImportanceWeightedELBO",
        "ParticleELBO",
        "ImportanceWeightedGradient",
        "Needs",
        "Particles",
        "RaoBlackwellELBO",
        "ReinforceLeaveOneOutELBO",
        "ScoreFunctionELBO",
        "SiteTerm",
        "StickingTheLandingELBO",
        "score_function_guide",
        # training, checkpoints and its errors
        "fit",
        "FitResult",
        "load_checkpoint",
        "NonFiniteError",
        "OutOfSupportError",
        "NaturalParameterDomainError",
        # distributed helpers
        "average_gradients",
        "process",
        "sum_over_processes",
        # relaxed samples, diagnostics, ArviZ
        "gumbel_noise",
        "gumbel_softmax_sample",
        "gradient_statistics",
        "psis_khat",
        "to_inference_data",
        # natural gradients
        "NaturalGradient",
        "natural_gradient",
    }
    assert needed <= set(pyro_vi.__all__)


def test_every_estimators_and_particles_export_is_a_package_export():
    import pyro_vi.estimators
    import pyro_vi.particles

    assert set(pyro_vi.estimators.__all__) <= set(pyro_vi.__all__)
    assert {"Needs", "Particles", "SiteTerm", "score_function_guide"} <= set(pyro_vi.particles.__all__)


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_importable(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__ list"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats a name"
    missing = [entry for entry in module.__all__ if not hasattr(module, entry)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    namespace = {}
    exec(f"from {name} import *", namespace)
    assert set(module.__all__) <= set(namespace)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_attribute_shadows_a_submodule(package):
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        submodule = importlib.import_module(f"{package}.{info.name}")
        assert getattr(module, info.name) is submodule, f"{package}.{info.name} is not the submodule"
        assert info.name not in module.__all__, f"{package}.__all__ exports {info.name!r}, a submodule's name"


def test_without_arviz_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # `import arviz` now raises ImportError
    with pytest.raises(ImportError, match=r'to_inference_data needs ArviZ.*pip install "pyro_vi\[arviz\]"'):
        pyro_vi.to_inference_data(lambda: None, lambda: None)
    with pytest.raises(ImportError, match=r'psis_khat needs ArviZ.*pip install "pyro_vi\[arviz\]"'):
        pyro_vi.psis_khat(list(range(30)))
