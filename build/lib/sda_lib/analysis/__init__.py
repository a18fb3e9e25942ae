"""Analyses of embeddings and adapters: alignment metrics, gradient conflict, the explorer."""
