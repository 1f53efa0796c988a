"""`hyperion run` with the lab's fault worker, for `hyperion-lab chaos`: `python -m hyperion.lab.chaosdaemon ARGS`.

ARGS are `hyperion run`'s. The daemon is the product's, parsed and run by the product's CLI;
only its workers' entry point differs (hyperion.lab.faultworker: SIGUSR1 starves a worker's
fill ring). The product has no option for this, so that no production daemon runs a fault hook.
"""

from __future__ import annotations

import sys

from hyperion.cli.main import build_parser, dispatch
from hyperion.lab import faultworker


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    args.worker_module = faultworker.MODULE
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
