"""Data: Speech Commands layout, label sets, splits, synthetic speech, download, augmentation, loading,
long test streams for streaming evaluation."""
