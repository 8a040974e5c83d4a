"""The built-in configs, one YAML file each (a comment names each recipe's source)."""

from importlib import resources


def builtin_configs() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def description(name: str, width: int = 100) -> str:
    """A built-in config's leading comment, shortened to `width` characters at a word: what it is and, for a
    paper's recipe, its source."""
    words = []
    for line in resources.files(__name__).joinpath(f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " ..."
