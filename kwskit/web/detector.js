// Keyword detections from per-frame scores: a port of kwskit/stream/detector.py's Detector
// (same smoothing, spans, minimum duration and refractory rule, same arithmetic in float64),
// so the page reports what `kwskit stream` reports on the same frames. See that file for the
// rules; the comments here only say which Python method each method mirrors.

const EPS = 1e-9;  // seconds: _EPS in detector.py

export class Detector {
  // labels: class names in score order; opts: threshold (a number or {label: p}),
  // smoothing_s, refractory_s, min_duration_s, ignore (labels never reported)
  constructor(labels, opts = {}) {
    this.labels = labels;
    this.smoothingS = opts.smoothing_s ?? 0.1;
    this.refractoryS = opts.refractory_s ?? 1.0;
    this.minDurationS = opts.min_duration_s ?? 0.0;
    const ignore = opts.ignore ?? ["_silence_", "_unknown_"];
    this.keywords = labels.map((_, i) => i).filter((i) => !ignore.includes(labels[i]));
    const thr = opts.threshold ?? 0.5;
    this.thresholds = labels.map((l) => (typeof thr === "number" ? thr : thr[l] ?? 0.5));
    this.reset();
  }

  // Detector.reset
  reset() {
    this.histT = [];  // frames still inside the smoothing window
    this.histS = [];
    this.open = new Map();  // keyword index -> [start, end, peak] of the span in progress
    this.lastStart = this.labels.map(() => -Infinity);
    this.lastTime = -Infinity;
    this.smoothed = null;  // the newest smoothed row (for the live bars)
  }

  // Detector.smooth: causal moving average over (t - smoothing_s, t], history kept
  smooth(scores, times) {
    if (this.smoothingS <= 0 || !times.length) return scores.map((r) => Float64Array.from(r));
    const t = this.histT.concat(times);
    const s = this.histS.concat(scores);
    const c = this.labels.length;
    const csum = [new Float64Array(c)];  // np.cumsum order: sequential float64 sums
    for (const row of s) {
      const prev = csum[csum.length - 1];
      csum.push(prev.map((v, k) => v + row[k]));
    }
    const out = [];
    let begin = 0;
    for (let i = this.histT.length; i < t.length; i++) {
      while (t[begin] < t[i] - this.smoothingS + EPS) begin++;  // searchsorted(..., "left")
      const n = i + 1 - begin;
      out.push(csum[i + 1].map((v, k) => (v - csum[begin][k]) / n));
    }
    const keepFrom = t[t.length - 1] - this.smoothingS + EPS;
    const keep = t.map((x) => x > keepFrom);
    this.histT = t.filter((_, i) => keep[i]);
    this.histS = s.filter((_, i) => keep[i]);
    return out;
  }

  // Detector._close
  close(k, out) {
    const [start, end, peak] = this.open.get(k);
    this.open.delete(k);
    if (end - start + EPS < this.minDurationS) return;
    if (start - this.lastStart[k] + EPS < this.refractoryS) return;
    this.lastStart[k] = start;
    out.push({ keyword: this.labels[k], start, end, score: peak });
  }

  // Detector.update: feed frames (rows of class scores) with their times (s, increasing);
  // returns the detections whose spans ended in them, ordered by end time.
  update(scores, times) {
    if (!times.length) return [];
    if (times[0] <= this.lastTime) throw new Error("times must increase across updates");
    const sm = this.smooth(scores, times);
    this.smoothed = sm[sm.length - 1];
    this.lastTime = times[times.length - 1];
    const out = [];
    for (const k of this.keywords) {  // keyword by keyword, frames in order: Python's order
      for (let i = 0; i < times.length; i++) {
        const v = sm[i][k];
        const span = this.open.get(k);
        if (v >= this.thresholds[k]) {
          if (span) { span[1] = times[i]; span[2] = Math.max(span[2], v); }
          else this.open.set(k, [times[i], times[i], v]);
        } else if (span) {
          this.close(k, out);
        }
      }
    }
    return sortByEnd(out);
  }

  // Detector.finish: end of stream, emit the spans still open, then reset
  finish() {
    const out = [];
    for (const k of [...this.open.keys()].sort((a, b) => a - b)) this.close(k, out);
    this.reset();
    return sortByEnd(out);
  }
}

// out.sort(key=lambda d: (d.end, d.start)) -- a stable sort, as Python's
function sortByEnd(out) {
  return out.sort((a, b) => a.end - b.end || a.start - b.start);
}
