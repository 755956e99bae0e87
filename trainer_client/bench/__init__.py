"""`pcm-bench`: the measured claims (docs/design.md, "Measured claims"), each ratio measured
in one run."""
