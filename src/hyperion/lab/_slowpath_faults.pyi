"""Type stub of the lab's fault build of the slow path's extension (native/lab/slowpath_faults.c):
everything hyperion._slowpath has, plus the control-block flag its fault hook reads."""

from hyperion._slowpath import *  # noqa: F403

FLAG_STARVE_FILL: int
