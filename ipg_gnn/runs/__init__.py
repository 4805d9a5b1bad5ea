"""Run plumbing: atomic files, checkpoints and cache keys, loggers and stage timers, and loading
a finished run back. Import the submodules directly: `runs.io` sits below every stage (stores
and dataset downloads write through it), `runs.train_run` above the stages it loads."""
