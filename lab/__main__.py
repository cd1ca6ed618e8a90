"""python -m lab up|down|status|inventory [PART ...]"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import control, core, inventory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "inventory"])
    parser.add_argument("parts", nargs="*", help=f"lab parts (default all): {', '.join(control.PARTS)}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.command == "up":
            control.up(args.parts)
            print(f"lab up in {time.monotonic() - started:.1f}s; inventory: {inventory.INVENTORY_DIR}")
        elif args.command == "down":
            control.down(args.parts)
            print(f"lab down in {time.monotonic() - started:.1f}s")
        elif args.command == "inventory":
            print(inventory.write(core.load_state()))
        else:
            report = control.status()
            print(json.dumps(report, indent=2))
            return 0 if all(r.get("ok") for r in report.values()) else 1
    except core.LabError as exc:
        print(f"lab {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
