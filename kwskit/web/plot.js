// The probability-over-time canvas: one line per keyword over [t0, t1], the detections as
// shaded spans. Long tracks keep each pixel column's maximum, so short peaks stay visible
// (as kwskit/stream/plots.py thins its lines).

export function drawPlot(canvas, track, keywords, t0, t1) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const g = canvas.getContext("2d");
  const pad = { l: 34 * dpr, r: 8 * dpr, t: 8 * dpr, b: 20 * dpr };
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (p) => pad.t + (1 - p) * (h - pad.t - pad.b);
  g.clearRect(0, 0, w, h);
  g.font = `${11 * dpr}px system-ui, sans-serif`;
  g.lineWidth = dpr;

  // grid: probability 0 / 0.5 / 1, a tick per second (or per 10 s on long tracks)
  g.strokeStyle = "#e4e8ee"; g.fillStyle = "#687385";
  for (const p of [0, 0.5, 1]) {
    g.beginPath(); g.moveTo(pad.l, y(p)); g.lineTo(w - pad.r, y(p)); g.stroke();
    g.fillText(p.toFixed(1), 4 * dpr, y(p) + 4 * dpr);
  }
  const step = t1 - t0 > 30 ? 10 : 1;
  for (let s = Math.ceil(t0 / step) * step; s <= t1; s += step) {
    g.beginPath(); g.moveTo(x(s), pad.t); g.lineTo(x(s), h - pad.b); g.stroke();
    g.fillText(`${s} s`, x(s) - 8 * dpr, h - 5 * dpr);
  }

  // detections: a shaded span from start to end, its keyword above it
  for (const d of track.detections) {
    if (d.end < t0 || d.start > t1) continue;
    const kw = keywords.find((k) => k.label === d.keyword);
    g.fillStyle = kw.color + "33";
    g.fillRect(x(d.start), pad.t, Math.max(2 * dpr, x(d.end) - x(d.start)), h - pad.t - pad.b);
    g.fillStyle = kw.color;
    g.fillText(d.keyword, x(d.start) + 2 * dpr, pad.t + 11 * dpr);
  }

  // one line per keyword (raw probability), thinned to one max per pixel column
  const { times, scores } = track;
  let first = 0;
  while (first < times.length && times[first] < t0) first++;
  for (const kw of keywords) {
    g.strokeStyle = kw.color; g.lineWidth = 1.5 * dpr; g.beginPath();
    let col = -1, best = 0, started = false;
    for (let i = first; i <= times.length; i++) {
      const c = i < times.length ? Math.round(x(times[i])) : -2;
      if (c !== col && col >= 0) {
        started ? g.lineTo(col, y(best)) : g.moveTo(col, y(best));
        started = true; best = 0;
      }
      if (i < times.length) { col = c; best = Math.max(best, scores[i][kw.index]); }
    }
    g.stroke();
  }
}
