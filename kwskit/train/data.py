"""The data side of training: scan the data set, build the train/validation splits, loaders."""

from __future__ import annotations

import torch

from kwskit.config import ExperimentConfig
from kwskit.data.loader import KwsDataset, load_noises, prepare_split
from kwskit.errors import KwsError
from kwskit.train.distributed import ShardedEpochSampler


def resolve_data_root(cfg: ExperimentConfig, data: str | None, quiet: bool = False) -> str:
    """--data, else the config's data.root, else the built-in synthetic set (built on first use)."""
    root = data or cfg.data.root
    if root:
        return str(root)
    from kwskit.data.synth import ensure_default_dataset

    return str(ensure_default_dataset(quiet=quiet))


def with_stream_windows(split, root: str, share: float, seed: int, quiet: bool = True):
    """``split`` plus ``share`` x one keyword's clip count of windows cut from a stream of the
    training split's clips (SNR 5-20 dB, 20% of the pauses loud), labelled by
    ``kwskit.data.streams.window_label``."""
    from kwskit.data.speech_commands import mean_keyword_count
    from kwskit.data.streams import build_test_stream, stream_windows

    n = round(share * mean_keyword_count(split.examples, split.labels))
    ts = build_test_stream(root, split.labels, "training", minutes=max(1.0, n / 30.0),
                           snr_db=(5.0, 20.0), seed=seed, progress=not quiet, loud_noise=0.2)
    x, y = stream_windows(ts, split.labels, n, seed)
    return extend_split(split, x, y, "window")


def extend_split(split, waves, labels, source: str):
    """``split`` plus float waves (n, clip_samples) labelled ``labels`` (indices), stored as
    int16 like the cached clips; their examples carry ``source``."""
    import numpy as np

    from kwskit.data.loader import INT16_SCALE, SplitData
    from kwskit.data.speech_commands import Example

    waves = np.round(np.clip(np.asarray(waves, np.float32), -1, 1) * INT16_SCALE).astype(np.int16)
    extra = [Example(None, int(label), i, source) for i, label in enumerate(labels)]
    return SplitData(split.labels, list(split.examples) + extra,
                     np.concatenate([np.asarray(split.waves), waves.reshape(len(extra), np.asarray(split.waves).shape[1])]),
                     split.noises)


class TrainData:
    """Train and validation loaders for a config; the train loader reshuffles per epoch."""

    def __init__(self, cfg: ExperimentConfig, data: str | None = None, rank: int = 0, world: int = 1,
                 quiet: bool = False):
        from kwskit.data.augment import AugmentConfig, WaveAugment
        from kwskit.data.speech_commands import (keyword_labels, resolve_labels, scan_dataset,
                                                 with_speaker_share)

        d = cfg.data
        self.root = resolve_data_root(cfg, data, quiet)
        self.labels = resolve_labels(d.labels)
        index = scan_dataset(self.root)
        words = index.words()
        missing = [w for w in keyword_labels(self.labels) if w not in words]
        if missing and index.layout == "speech_commands":
            raise KwsError(f"data.labels: {', '.join(missing)} not in {self.root} (its words: "
                           f"{', '.join(words)}); pass --data or --labels")
        common = dict(silence_share=d.silence_share, unknown_share=d.unknown_share, seed=cfg.train.seed,
                      sample_rate=d.sample_rate, clip_samples=d.clip_samples, cache_dir=d.cache_dir,
                      min_clip_fraction=d.min_clip_fraction, unknown_holdout=d.unknown_holdout)
        # other data sets' words widen _unknown_ in training only: validation stays comparable
        train_common = common | ({} if d.train_unknown_share is None
                                 else {"unknown_share": d.train_unknown_share})
        train_index = with_speaker_share(index, "training", d.train_speakers)
        self.train = prepare_split(train_index, self.labels, "training", **train_common,
                                   unknown_extra=d.unknown_extra,
                                   unknown_extra_share=d.unknown_extra_share)
        self.val = prepare_split(index, self.labels, "validation", **common)
        if not self.train.examples:
            raise KwsError(f"{self.root}: no training clips for labels {self.labels}")
        if d.stream_windows > 0:
            self.train = with_stream_windows(self.train, self.root, d.stream_windows,
                                             cfg.train.seed, quiet)
        augment_cfg = AugmentConfig.from_dict(cfg.augment)
        noises = load_noises(index.background, d.sample_rate) if index.background else []
        augment = WaveAugment(augment_cfg, noises)
        self._augment, self._cfg, self._rank, self._world = augment, cfg, rank, world
        self._make_train_loader()
        self.val_set = KwsDataset(self.val, augment=None)
        val_sampler = ShardedEpochSampler(len(self.val_set), 0, rank, world, shuffle=False, pad=False)
        self.val_loader = torch.utils.data.DataLoader(
            self.val_set, batch_size=cfg.train.eval_batch_size, sampler=val_sampler, num_workers=0)

    def _make_train_loader(self) -> None:
        cfg, workers = self._cfg, self._cfg.data.num_workers
        self.train_set = KwsDataset(self.train, augment=self._augment, seed=cfg.train.seed)
        self.train_sampler = ShardedEpochSampler(len(self.train_set), cfg.train.seed, self._rank,
                                                 self._world)
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.train.batch_size, sampler=self.train_sampler,
            num_workers=workers, persistent_workers=workers > 0, drop_last=False)

    def add_examples(self, waves, labels, source: str) -> None:
        """More training examples from now on (float waves, label indices), e.g. mined
        hard negatives; they are augmented like every clip."""
        if len(labels):
            self.train = extend_split(self.train, waves, labels, source)
            self._make_train_loader()

    def set_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
