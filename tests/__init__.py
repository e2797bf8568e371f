"""The test suite. Its folders mirror the code: ``particles/``, ``math/``,
``estimators/`` and ``training/`` test the packages of ``pyro_vi/`` of the
same names, ``models/`` the model/guide pairs of ``models/`` and ``guides/``,
``experiments/`` the studies and the README, ``docs/`` the documentation;
the modules at the top test ``pyro_vi``'s top-level modules and the whole
tree (public API, lint). Shared: ``conftest.py``, ``helpers.py``,
``programs.py`` (toy model/guide pairs) and ``refusals.py`` (the bad-input
check and its programs)."""
