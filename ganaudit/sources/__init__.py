"""Where images come from: generator checkpoints, sample folders, training and holdout sets."""
