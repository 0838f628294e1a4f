"""Running a training job: the loop, checkpoints, the run directory, processes and tracking."""
