"""Checkpoint-count limits shared by training and the report, in a module without torch so the
report can import it."""

# Above this a run gets a MANY_CHECKPOINTS warning (i2x.core.training.check_checkpoint_count),
# and the report's per-checkpoint figures show at most this many columns (i2x.report.thinning).
MANY_CHECKPOINTS = 200
