"""Experiment runner: absl flags -> ccp + data_pipelines wired for one benchmark run."""
