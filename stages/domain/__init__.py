"""Pseudo-domain labelers and the domain-aware module."""
