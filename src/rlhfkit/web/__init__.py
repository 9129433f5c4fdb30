"""The labeling web app (`rlhfkit serve`)."""
