"""`supermask predict`: classify image files with a .smask network."""

from __future__ import annotations

import argparse

def run(args: argparse.Namespace) -> int:
    from supermask.export.smask import predict

    for result in predict(args.net, args.images, top=args.top, device=args.device, task=args.task):
        ranked = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in result["top"])
        print(f"{result['image']}: {ranked}")
    return 0
