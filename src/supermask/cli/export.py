"""`supermask export`: a run as a .smask file (and plain safetensors / ONNX models)."""

from __future__ import annotations

import argparse

def run(args: argparse.Namespace) -> int:
    from supermask.export import smask as export

    for what, path in (("-o", args.output), ("--safetensors", args.safetensors), ("--onnx", args.onnx)):
        if path:
            export.check_output(path, what)
    report = export.export_run(args.run_dir, args.output)
    masks = (f"{report['mask_vs_entropy']}x their entropy bound of {report['entropy_bytes']:,.0f} bytes (the codes "
             f"{report['codes_vs_entropy']:.4f}x, plus {report['mask_head_bytes']} bytes of heads over "
             f"{report['mask_layers']} layers)" if report["mask_vs_entropy"] is not None
             else "every weight kept, so the entropy bound is 0 bytes")
    print(f"{report['file']}: {report['bytes']:,} bytes ({report['compression']}x smaller than the "
          f"{report['dense_float32_bytes']:,} bytes of dense float32 weights); masks {report['mask_bytes']:,} bytes, "
          f"{masks}")
    if "tasks" in report:  # a file of many tasks
        print(f"{report['tasks']} tasks over one seed: {report['bytes_per_task']:,.0f} bytes a task (masks "
              f"{report['mask_bytes_per_task']:,.0f}, entropy bound {report['entropy_bytes_per_task']:,.0f}; the "
              f"SupSup paper's 16-bit sparse indices would take {report['sparse_int16_bytes_per_task']:,.0f})")
    if args.safetensors or args.onnx:
        model = export.load(args.output)
        if args.safetensors:
            export.save_plain(model, args.safetensors, export.header_of(args.output))
            print(f"dense weights written to {args.safetensors}")
        if args.onnx:
            export.save_onnx(model, export.header_of(args.output), args.onnx)
            print(f"ONNX model written to {args.onnx}")
    return 0
