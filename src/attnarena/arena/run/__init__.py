"""Running suites: run configs resolved once, suites of runs, the runner that claims and
trains them, the training loop, checkpoints and saved runs."""
