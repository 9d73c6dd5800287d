"""Pieces of the RLVR recipe (`posttrain/recipes/rlvr.py`): rollouts and rewards, the training
buffer, advantages, the policy/value updates, the asynchronous generator and held-out evaluation."""
