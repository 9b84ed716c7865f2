"""Evaluation protocols for MEC backbones (linear probe, kNN, semi-supervised, transfer)."""
