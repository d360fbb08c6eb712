"""Tools around the training core, each a command of its own (``python -m bench.tools.<name>``):

- status: what a results directory holds (finished, running, failed, unreadable) and what to
  resubmit; slurm_queue, jobs_file and overrides are its SLURM and config readers
- advise: which batch size and LR to use, from a short run's noise scale
- profile: where one step's time and memory go
- interpolate: the loss along the line between two runs' parameters
- curvature: curvature of any saved checkpoint, without retraining.
"""
