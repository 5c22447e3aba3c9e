"""Data shipped with llamaherd: known-good checksum manifests of released models."""
