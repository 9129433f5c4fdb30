"""Evaluation: does the aligned model beat the one it started from?"""
