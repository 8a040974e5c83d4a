"""`supermask together`: runs that differ only in their seeds, trained in this process."""

from __future__ import annotations

import argparse

def run(args: argparse.Namespace) -> int:
    from supermask.multi.together import read_group_file, train_together

    group_dir, configs = read_group_file(args.group_file)
    summaries = train_together(configs, group_dir, forward=args.forward, progress=not args.quiet)
    for s in summaries:
        print(f"{s['out_dir']}: test accuracy {100 * s['test_acc']:.2f}%")
    return 0
