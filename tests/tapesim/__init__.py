"""Simulated LTO tape library for tests: lsscsi, mt, mtx, mkltfs, ltfs and ltfsck.

The executables in ``bin/`` read and write a state folder named by the
``TAPESIM_STATE`` environment variable. ``fixture.build_library`` creates one.
"""

STATE_ENV = "TAPESIM_STATE"
