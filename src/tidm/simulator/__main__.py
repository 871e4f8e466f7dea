"""`python -m tidm.simulator [--config sim.yaml]`: run the simulator until SIGINT/SIGTERM.

Prints one JSON line with the endpoint once the server listens (the port is chosen when it is 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence

from tidm.simulator.config import SimulatorConfig, load_config
from tidm.simulator.errors import SimulatorConfigError
from tidm.simulator.server import run_forever


def _announce(info: Mapping[str, object]) -> None:
    print(json.dumps(dict(info)), flush=True)  # noqa: T201 - the process's one line of output


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the simulator; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m tidm.simulator", description=__doc__)
    parser.add_argument("--config", help="YAML simulator config (default: one asset, one sine signal)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config) if args.config else SimulatorConfig()
    except SimulatorConfigError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 2
    run_forever(config, announce=_announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
