"""`supermask eval`: a run directory or a .smask file, measured again on its test set."""

from __future__ import annotations

import argparse
import json

from supermask.errors import SupermaskError

def run(args: argparse.Namespace) -> int:
    from supermask.export.smask import evaluate_smask
    from supermask.run.config import parse_overrides
    from supermask.run.train import evaluate_run

    data = parse_overrides(args.overrides)
    if set(data) - {"dataset", "data_dir"}:
        raise SupermaskError(f"eval takes only dataset=PATH and data_dir=DIR, not {sorted(set(data) - {'dataset', 'data_dir'})[0]}=")
    evaluate = evaluate_smask if args.run_dir.endswith(".smask") else evaluate_run
    result = evaluate(args.run_dir, device=args.device, **{k: str(v) for k, v in data.items() if v is not None})
    print(json.dumps(result, indent=2))
    return 0
