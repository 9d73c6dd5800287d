"""Helpers of the eval recipe (`posttrain.recipes.eval`): the on-disk results store and summaries."""
