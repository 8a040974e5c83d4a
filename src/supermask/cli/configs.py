"""`supermask configs`: the built-in configs, or one resolved."""

from __future__ import annotations

import argparse
import json

from supermask.cli.parser import DEFAULT_CONFIG
from supermask.run.configs import builtin_configs, description

def run(args: argparse.Namespace) -> int:
    from supermask.run.config import make_config, parse_overrides, read_config_source

    if args.name and "=" in args.name:  # overrides alone preview the default config
        args.overrides.insert(0, args.name)
        args.name = DEFAULT_CONFIG
    if args.name:
        cfg = make_config(args.name, parse_overrides(args.overrides))
        given = " ".join(args.overrides)
        print(f"# {args.name}{' ' + given if given else ''}: {json.dumps(read_config_source(args.name))}")
        print("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.to_dict().items()))
    else:
        names = builtin_configs()
        width = max(map(len, names))
        print("\n".join(f"{name:<{width}}  {description(name)}" for name in names))
    return 0
