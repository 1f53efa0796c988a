"""The product's AF_XDP worker with a fault hook, for `hyperion-lab chaos`: `python -m hyperion.lab.faultworker`.

The product's worker loop carries no fault code. This entry runs the product's worker
(hyperion.slowpath.worker) unchanged over the lab's build of the extension,
hyperion.lab._slowpath_faults (the same sources compiled with HYP_FAULT_INJECTION), whose
loop stops refilling the fill ring while a control-block flag is set; SIGUSR1 toggles it.
The supervisor starts this module in place of the product's when SlowPathOptions.worker_module
names it (hyperion.lab.chaosdaemon does).
"""

from __future__ import annotations

import argparse
import mmap
import signal
import sys
from types import FrameType

from hyperion.errors import HyperionError

MODULE = "hyperion.lab.faultworker"
_NATIVE = "hyperion._slowpath"


def _substitute_extension() -> None:
    """Makes `from hyperion import _slowpath` give the fault build: before anything imports it, so
    that the worker, its protocol module and the Queue it opens all use the one build."""
    import hyperion
    from hyperion.lab import _slowpath_faults

    if sys.modules.get(_NATIVE, _slowpath_faults) is not _slowpath_faults:
        raise HyperionError(f"{MODULE}: {_NATIVE} was imported before the fault build could replace it")
    sys.modules[_NATIVE] = _slowpath_faults
    hyperion._slowpath = _slowpath_faults


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _substitute_extension()
    from hyperion.lab import _slowpath_faults
    from hyperion.slowpath import worker
    from hyperion.slowpath.protocol import CONTROL_BYTES, ControlBlock

    # The worker maps the same memfd: a write to this mapping is one to the loop's control block.
    parser = argparse.ArgumentParser(prog=MODULE, add_help=False)
    parser.add_argument("--control-fd", type=int, required=True)
    control = ControlBlock(mmap.mmap(parser.parse_known_args(args)[0].control_fd, CONTROL_BYTES))

    def starve(signum: int, frame: FrameType | None) -> None:
        control.toggle_flag(_slowpath_faults.FLAG_STARVE_FILL)

    signal.signal(signal.SIGUSR1, starve)
    return worker.main(args)


if __name__ == "__main__":
    sys.exit(main())
