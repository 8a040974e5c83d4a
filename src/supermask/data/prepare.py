"""A loaded dataset as a run trains on it: one task of a task stream, normalized as the run says, some of its
training images held out. Training (`run.train.load_data`) and a `.smask`'s evaluation (`export.smask.file_dataset`)
both call it, so a network is always evaluated on the data it was found on."""

from __future__ import annotations

from supermask.data.base import Dataset
from supermask.data.load import normalized_as
from supermask.data.shard_dataset import ShardDataset
from supermask.data.stream import StreamDataset

AnyDataset = Dataset | StreamDataset | ShardDataset


def as_trained(ds: AnyDataset, *, task_stream: str | None = None, task: int | None = None,
               normalization: str = "dataset", holdout: int = 0,
               holdout_seed: int = 777) -> tuple[AnyDataset, Dataset | None]:
    """(`ds` as trained on, the `holdout` training images it leaves out as a set whose test split they are, or None)."""
    if task_stream is not None and task is not None:
        from supermask.data.task_streams import task_dataset

        ds = task_dataset(task_stream, ds, task)
    ds = normalized_as(ds, normalization)
    if not holdout:
        return ds, None
    from supermask.data.holdout import hold_out

    return hold_out(ds, holdout, holdout_seed)
