#!/usr/bin/env python3
"""Run the project on a Kandinsky 2.1 fixture folder and write candidate .npz files with the golden key names.

    python scripts/parity.py FIXTURE_DIR OUT_DIR
    python ../shared/tools/check_parity.py compare FIXTURE_DIR/golden/components.npz OUT_DIR/components.npz --strict-keys

OUT_DIR gets tokenizers, components, prior_pipeline, inpaint_pipeline and debug_intermediates .npz, and
schedulers.npz (every decoder sampler) when the fixture has golden/schedulers.json.
"""
import argparse
import sys
from pathlib import Path

from parity_lib import run_all


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fixture", type=Path, help="folder with prior/, inpaint/, golden/")
    ap.add_argument("out_dir", type=Path, help="where to write the candidate .npz files")
    ap.add_argument("--mode", choices=("graph", "pynative"), default="graph",
                    help="run the networks compiled (graph, the default) or eagerly (pynative)")
    args = ap.parse_args()
    if not (args.fixture / "golden" / "cases.json").is_file():
        print(f"error: {args.fixture} does not look like a fixture (no golden/cases.json)", file=sys.stderr)
        return 2
    run_all(args.fixture, args.out_dir, mode=args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
