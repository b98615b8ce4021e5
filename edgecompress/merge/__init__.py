"""DeepRebirth layer merging on torch.fx graphs: exact folds and approximate merges."""
