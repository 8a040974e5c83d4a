"""The built-in configs, one YAML file each (a comment names each recipe's source)."""

from importlib import resources


def builtin_configs() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
