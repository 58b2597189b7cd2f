"""Data: Speech Commands layout, label sets, splits, synthetic speech, download, augmentation, loading."""
