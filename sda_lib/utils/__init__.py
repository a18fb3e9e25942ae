"""Plumbing every layer uses and none of the science: atomic files, locks, preemption, exit
statuses, registries, paths, command-line parameters and choices, progress bars and number
formats."""
