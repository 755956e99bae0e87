"""`pcm-bench`: the measured claims (docs/design.md, "Measured claims"), each ratio measured
in one run, and the research instruments (the estimator, replay, learning and behaviour
studies), with the server launchers they start (`pcm_bench.servers`). It sits above the
product: it imports trainer_client, selector_service and pcm_contract, none of which imports it
(the import contracts in pyproject.toml)."""
