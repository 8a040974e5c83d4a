"""Writing small tar archives in tests (test modules import it: pytest puts this folder on sys.path)."""

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    """A tar (mode "w") or .tar.gz (mode "w:gz") at `path` holding `members` (name -> bytes), in order."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
