"""`pcm-bench`: the measured claims of DESIGN.md section 8, each ratio measured in one run."""
