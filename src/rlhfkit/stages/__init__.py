"""Stages: each reads its inputs from files and the store, writes its outputs there, and can
be run alone (CLI), from Python, or as a step of a pipeline."""
