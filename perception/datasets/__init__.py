"""Datasets: readers for nuScenes-format data and the embedded synthetic world generator."""
