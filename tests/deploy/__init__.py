"""Deployment tests: docker-compose.yml, Prometheus, Grafana (no Docker engine needed)."""
