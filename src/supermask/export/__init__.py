"""Export: a found network as a `.smask` file (seeds plus compressed masks; `smask`), its mask codec (`codec`),
and plain ONNX / safetensors models. The names below were `supermask.export`'s when it was one module."""

from supermask.export.smask import HEADER, MAGIC, VERSION, export_run, header_of, load, read

__all__ = ["HEADER", "MAGIC", "VERSION", "export_run", "header_of", "load", "read"]
