"""Analyses of a study: difficulty, significance, quality, reader studies, metrics."""
