"""A detection loss: max-pooling over time of the keyword posterior (``train.loss: maxpool``).

Clip training asks for the right class at one fixed place: the whole 1-s clip, word centred.
A streaming detector fires at whichever frame scores highest, and a false alarm is any frame
of a non-keyword stretch that scores high. Max-pooling loss (Sun et al. 2016, "Max-pooling
loss training of long short-term memory networks for small-footprint keyword spotting",
SLT; Hou et al. 2020, "Mining effective negative training samples for keyword spotting",
ICASSP) trains those two frames instead:

- each clip gets ``context_s`` seconds of context in front of it: the end of a non-keyword
  clip of the same batch (another word's tail, silence or noise), as a stream would have;
- the model scores every frame of that segment as the streamer does (a causal sliding
  window of 1 s, ``KwsPipeline.forward(wave, frames_window)``);
- a keyword clip: cross-entropy for its keyword at the frame, among those whose window ends
  inside the clip, where that keyword's posterior is highest;
- a silence / unknown clip: the whole segment holds no keyword, so at the frame where any
  keyword's posterior is highest, -log of the non-keyword probability mass;
- plus the ordinary clip cross-entropy (with label smoothing), ``clip="context"``: on the
  segment's last frame, the clip in its context; ``clip="bare"``: on the bare clip, a second
  forward pass, as a clip-trained model sees it (and validation scores it). The training
  accuracy counts the clip term's logits.

The loss is the clip term plus the max-pooled term, weight 1 each. A step costs about
(1 + context_s) times a clip step, and one clip step more with ``clip="bare"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kwskit.data.speech_commands import keyword_labels
from kwskit.errors import KwsError

SAMPLE_RATE = 16000


class MaxPoolDetection(torch.nn.Module):
    """Training objective ``(net, wave, target) -> (loss, logits)`` (kwskit.train.loop's loss
    seam); ``net`` is a KwsPipeline (or its DistributedDataParallel wrapper)."""

    def __init__(self, labels: list[str], context_s: float = 0.5, label_smoothing: float = 0.0,
                 window_s: float = 1.0, clip: str = "context"):
        super().__init__()
        if not 0.0 < context_s <= 2.0:
            raise KwsError(f"config: train.loss_context_s: must be in (0, 2] seconds, got {context_s!r}")
        if clip not in ("context", "bare"):
            raise KwsError(f"config: train.loss_clip: must be context or bare, got {clip!r}")
        self.clip = clip
        keywords = set(keyword_labels(labels))
        if not keywords or len(keywords) == len(labels):
            raise KwsError("config: train.loss: maxpool needs keywords and _silence_ / _unknown_ "
                           f"labels, got {labels}")
        self.register_buffer("is_keyword", torch.tensor([w in keywords for w in labels]),
                             persistent=False)
        self.context = int(round(context_s * SAMPLE_RATE))
        self.window_s = float(window_s)
        self.label_smoothing = label_smoothing
        self._window: int | None = None

    def check(self, pipeline) -> None:
        """KwsError unless ``pipeline`` scores frames as a stream (a streamable model)."""
        if not getattr(pipeline, "streamable", False):
            name = getattr(pipeline.backbone, "model_name", type(pipeline.backbone).__name__)
            raise KwsError(f"config: train.loss: maxpool scores every frame of a stream, and "
                           f"{name} cannot stream; use train.loss=ce")

    def _frames(self, net, num_samples: int | None = None) -> int:
        """Body output frames in ``num_samples`` samples; None: in the pooling window."""
        from kwskit.stream.streaming import window_frames

        pipeline = getattr(net, "module", net)
        if num_samples is None:
            if self._window is None:
                self._window = window_frames(pipeline, self.window_s)
            return self._window
        n_feat = (num_samples if pipeline.input_kind == "wave"
                  else int(pipeline.frontend.num_frames(num_samples)))
        return int(pipeline.backbone.num_out_frames(n_feat))

    def contexts(self, wave: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, context) samples in front of each clip: the tail of a non-keyword clip of the
        batch drawn at random (zeros when the batch has none)."""
        negative = torch.nonzero(~self.is_keyword[target])[:, 0]
        if len(negative) == 0:
            return wave.new_zeros(wave.shape[0], self.context)
        pick = negative[torch.randint(len(negative), (wave.shape[0],), device=wave.device)]
        tail = wave[pick, -self.context:]
        if tail.shape[1] < self.context:  # clips shorter than the context: pad in front
            tail = F.pad(tail, (self.context - tail.shape[1], 0))
        return tail

    def forward(self, net, wave, target):
        segment = torch.cat([self.contexts(wave, target), wave], dim=1)
        frames = net(segment, frames_window=self._frames(net)).float()  # (B, classes, T')
        # why a bare pass: with context only, validation's bare clips (whose first frames see
        # the causal padding, not a word's tail) become out of distribution
        logits = net(wave).float() if self.clip == "bare" else frames[..., -1]
        clip_loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)

        # frames whose window ends inside the clip (not in the context in front of it)
        first = min(self._frames(net, self.context), frames.shape[-1] - 1)
        logp = F.log_softmax(frames, dim=1)
        positive = self.is_keyword[target]
        terms = []
        if positive.any():
            own = logp[positive, :, first:]  # (P, classes, T)
            kw = target[positive]
            own_score = own.gather(1, kw[:, None, None].expand(-1, 1, own.shape[-1]))[:, 0]
            best = own_score.detach().argmax(dim=-1)
            terms.append(-own_score.gather(1, best[:, None])[:, 0])
        if (~positive).any():
            neg = logp[~positive]  # (N, classes, T): no keyword anywhere in the segment
            kw_score = neg[:, self.is_keyword].logsumexp(dim=1)  # log P(some keyword)
            worst = kw_score.detach().argmax(dim=-1)
            at = neg.gather(2, worst[:, None, None].expand(-1, neg.shape[1], 1))[..., 0]
            terms.append(-at[:, ~self.is_keyword].logsumexp(dim=1))
        detection_loss = torch.cat(terms).mean()
        return clip_loss + detection_loss, logits

    def describe(self) -> dict:
        return {"loss": "maxpool", "loss_context_s": self.context / SAMPLE_RATE,
                "loss_clip": self.clip}
