"""Committed golden vectors (`*.npz` + `manifest.json`), their reader/writer and their generator."""
