"""Backbone options side by side in one run: parameters, build time and CPU forward / forward+backward time of the
backbone + FPN at a small input, for the demo's tiny backbone and ResNet-50 each plain, with deformable convs
(DCNv1, modulated DCNv2), with a 2- and 3-step recursive feature pyramid and with both, and for the timm backbones
SE-ResNeXt-50 and SENet-154 (plain, with modulated DCN, and SENet-154 as the report uses it: modulated DCN in
stages 3-5 and a 3-step RFP).

Each round times every option once (options interleaved, so background load hits them alike); the median round is
reported. Forward+backward: the sum of squares of every FPN map, backpropagated (train mode, trainable BatchNorm).

    python benchmarks/backbone_options.py [--size 128] [--batch 2] [--rounds 3] [--threads 1] [--skip-senet]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from bench_common import machine, markdown_table, write_results

from longtail_seg.models.backbones import build_backbone

TINY = {"fpn_channels": 64, "tiny_stem_channels": 24, "tiny_stage_channels": (48, 96, 192)}  # the demo model
RESNET = {"fpn_channels": 256}
OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("tiny", "plain", TINY),
    ("tiny", "DCN stages 3-4", {**TINY, "dcn_stages": (3, 4)}),
    ("tiny", "modulated DCN stages 3-4", {**TINY, "dcn_stages": (3, 4), "dcn_modulated": True}),
    ("tiny", "RFP 2 steps", {**TINY, "rfp_steps": 2}),
    ("tiny", "RFP 3 steps", {**TINY, "rfp_steps": 3}),
    ("tiny", "modulated DCN 3-4 + RFP 3", {**TINY, "dcn_stages": (3, 4), "dcn_modulated": True, "rfp_steps": 3}),
    ("resnet50", "plain", RESNET),
    ("resnet50", "DCN stages 3-5", {**RESNET, "dcn_stages": (3, 4, 5)}),
    ("resnet50", "modulated DCN stages 3-5", {**RESNET, "dcn_stages": (3, 4, 5), "dcn_modulated": True}),
    ("resnet50", "RFP 2 steps", {**RESNET, "rfp_steps": 2}),
    ("resnet50", "RFP 3 steps", {**RESNET, "rfp_steps": 3}),
    ("resnet50", "modulated DCN 3-5 + RFP 3", {**RESNET, "dcn_stages": (3, 4, 5), "dcn_modulated": True,
                                               "rfp_steps": 3}),
    ("timm:seresnext50_32x4d", "plain", RESNET),
    ("timm:seresnext50_32x4d", "modulated DCN stages 3-5", {**RESNET, "dcn_stages": (3, 4, 5),
                                                             "dcn_modulated": True}),
    ("timm:legacy_senet154", "plain", RESNET),
    ("timm:legacy_senet154", "modulated DCN stages 3-5", {**RESNET, "dcn_stages": (3, 4, 5), "dcn_modulated": True}),
    ("timm:legacy_senet154", "modulated DCN 3-5 + RFP 3", {**RESNET, "dcn_stages": (3, 4, 5), "dcn_modulated": True,
                                                           "rfp_steps": 3}),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="square input side in pixels (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="images per batch (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all options (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier when shared)")
    parser.add_argument("--skip-senet", action="store_true", help="leave out the SENet-154 rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="where the JSON and Markdown go (default benchmarks/results)")
    return parser.parse_args(argv)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    options = [o for o in OPTIONS if not (args.skip_senet and "senet154" in o[0])]
    models, rows = [], []
    for backbone, option, kwargs in options:
        seconds = _timed(lambda b=backbone, k=kwargs: models.append(build_backbone(b, **k)))
        params = sum(p.numel() for p in models[-1].parameters())
        rows.append({"backbone": backbone, "option": option, "params_M": params / 1e6, "build_s": seconds})
    x = torch.randn(args.batch, 3, args.size, args.size)
    forward = [[] for _ in options]
    backward = [[] for _ in options]
    for _ in range(args.rounds):
        for index, model in enumerate(models):
            model.eval()
            with torch.no_grad():
                forward[index].append(_timed(lambda m=model: m(x)))
            model.train()
            model.zero_grad(set_to_none=True)
            backward[index].append(_timed(
                lambda m=model: sum(v.square().sum() for v in m(x).values()).backward()))
    base = {}
    for row, fwd, bwd in zip(rows, forward, backward):
        row["forward_s"] = statistics.median(fwd)
        row["forward_backward_s"] = statistics.median(bwd)
        plain = base.setdefault(row["backbone"], row)
        row["x_plain_fwd_bwd"] = row["forward_backward_s"] / plain["forward_backward_s"]
        row["x_plain_params"] = row["params_M"] / plain["params_M"]
    result = {"input": [args.batch, 3, args.size, args.size], "rounds": args.rounds, "rows": rows,
              "machine": machine()}
    text = (f"Backbone + FPN on CPU, input {args.batch} x 3 x {args.size} x {args.size}, {args.threads} thread(s), "
            f"median of {args.rounds} interleaved rounds.\n\n" + markdown_table(rows))
    write_results("backbone_options", result, text, args.out_dir)
    print(text)
    return result


if __name__ == "__main__":
    main()
