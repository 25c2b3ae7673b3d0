"""YAML presets shipped with chddl (installed as the ``chddl_configs`` package)."""
