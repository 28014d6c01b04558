"""The report's double classifier: join two retrained classifiers of one representation -> OUT (model_final.pth).

Both inputs come from workflow_scripts/retrain.py on the same representation checkpoint (e.g. A with repeat factor
sampling, B with class-aware sampling). Every non-classifier tensor must be bit-identical; the output's classifier
is DoubleClassifier([A's, B's]) and scores S = (S_A + S_B) / 2 with a single backbone pass:

    python workflow_scripts/combine_classifiers.py --first results/demo/models/crt_rfs/model_final.pth \
        --second results/demo/models/crt_class_aware/model_final.pth --out results/demo/models/double/model_final.pth
"""

from __future__ import annotations

import argparse

from longtail_seg.cli import script_parser
from longtail_seg.engine.retrain import combine_classifiers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--first", required=True, help="model_final.pth of the first retrained classifier (A)")
    parser.add_argument("--second", required=True, help="model_final.pth of the second retrained classifier (B)")
    parser.add_argument("--out", required=True, help="output detector file with the double classifier")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    try:
        out = combine_classifiers(args.first, args.second, args.out)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"combine_classifiers: {error}") from None
    print(f"double classifier of {args.first} + {args.second} -> {out}", flush=True)


if __name__ == "__main__":
    main(parse_args())
