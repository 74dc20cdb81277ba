"""Execution-provider profiles: data files only (one TOML per device / provider)."""
