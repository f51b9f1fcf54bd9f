"""Measuring: the one timer, the machine's load while it runs, peak memory, the
environment a figure was taken on, and the speed sweep."""
