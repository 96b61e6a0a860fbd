"""``python -m tfpipe.config``: print the resolved config of a file and overrides, or (``--reference``)
the Markdown reference of every key that ``docs/configuration.md`` holds."""

from __future__ import annotations

import sys

import yaml

from tfpipe.config import ConfigError, config_to_dict, load_config
from tfpipe.console import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m tfpipe.config", description="print a resolved config, or the reference of every key"
    )
    parser.add_argument("--reference", action="store_true", help="print the Markdown reference of all keys")
    parser.add_argument("--config", help="YAML file to resolve")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_intermixed_args(argv)
    if args.reference:
        from tfpipe.config.reference import (
            config_reference_markdown,  # the docs generator, nothing else uses it
        )

        sys.stdout.write(config_reference_markdown())
        return 0
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"python -m tfpipe.config: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
