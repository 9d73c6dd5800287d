"""Data curation tools: decontamination, synthetic data and on-policy preference data.

Separate from `posttrain.data`, which only reads, converts and packs datasets for training.
"""
