"""Atomic, checksummed downloads."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from supermask.errors import ConfigError

from .base import _one_line

_DOWNLOAD_TIMEOUT_S = 30.0


def _md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, md5: str | None = None, *, timeout: float = _DOWNLOAD_TIMEOUT_S) -> Path:
    """Download url to dest atomically (temp file + rename), checking md5 first; failures raise ConfigError.

    A partial or corrupt download never appears under dest, so an interrupted run cannot leave a bad
    file that later runs would trust.
    """
    from tqdm import tqdm

    dest = Path(dest)
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        h = hashlib.md5()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None, leave=False) as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
        if md5 is not None and h.hexdigest() != md5:
            raise ConfigError(f"download of {url} has md5 {h.hexdigest()}, expected {md5}; the file was discarded")
        os.replace(tmp, dest)
        tmp = None
        return dest
    except urllib.error.URLError as e:
        raise ConfigError(f"download of {url} failed: {_one_line(e.reason)}") from None
    except ConfigError:
        raise
    except (OSError, ValueError) as e:  # ValueError: malformed URL
        raise ConfigError(f"download of {url} failed: {_one_line(e)}") from None
    except http.client.HTTPException as e:  # e.g. IncompleteRead
        raise ConfigError(f"download of {url} failed: {type(e).__name__}: {_one_line(e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
