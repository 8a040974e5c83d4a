"""The files of a run directory, by name: where `supermask train` writes and everything else reads them."""

CONFIG_FILE = "config.yaml"  # the resolved config, written when the run starts
CHECKPOINT = "checkpoint.safetensors"  # the source of truth: model, optimizer and the run's state
METRICS = "metrics.jsonl"  # one line per epoch
FINETUNE_METRICS = "finetune_metrics.jsonl"  # one line per epoch of the weight fine-tuning after a search
SCHEDULE = "schedule.jsonl"  # one line per layer changed by an IWR or IteRand step
MASKS = "masks.safetensors"  # the final masks, written when the run ends
SUMMARY = "summary.json"  # the final result, written last: a run is finished when it exists
TASKS_FILE = "tasks.json"  # a run of many tasks: each finished task (supermask.multi.tasks)
