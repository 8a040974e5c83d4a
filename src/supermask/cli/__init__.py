"""The `supermask` command line: train, eval, study, together, compare, path, norms, export, predict, sweep, configs.

`parser` builds it; each command lives in its own module (`supermask.cli.train`, ...), imported when it runs.
"""

from __future__ import annotations

import os
import sys

from supermask.cli.parser import DEFAULT_CONFIG, build_parser
from supermask.errors import SupermaskError

__all__ = ["DEFAULT_CONFIG", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as the program: a sweep's worker ends with its sweep
        from supermask.multi.worker import die_with_parent

        die_with_parent()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # --help ends here, before anything imports torch
    if argv is None:  # this process is ours to tune, before the command allocates anything
        from supermask.compat import keep_freed_memory

        keep_freed_memory()
    # argparse fills a nargs="*" positional only once, so key=value pairs after a flag
    # (`train digits --resume epochs=3`) come back unrecognized: they are overrides too.
    if extra:
        if getattr(args, "command", None) in ("train", "study", "eval", "configs") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # A config name given alone with overrides after it parses as config=first override: put it back.
    if getattr(args, "command", None) == "train" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that left (`| head`) surfaces here
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141  # as if killed by SIGPIPE, like other tools cut off by `head`
    except SupermaskError as e:
        print(f"supermask: error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # an input file that is not text
        print(f"supermask: error: an input file is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused (a file where a folder is wanted, a full disk, permissions)
        where = f"{e.filename}: " if e.filename else ""
        print(f"supermask: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command with --resume" if args.command == "train" else "the same command again"
        print(f"supermask: interrupted; continue with {again}", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's own flush at exit does not fail again on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (called from Python, output captured)


if __name__ == "__main__":
    sys.exit(main())
