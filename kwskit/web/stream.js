// The exported streaming model in onnxruntime-web (WASM, one thread), fed like kwskit's
// Python streamers: StreamModel mirrors ChunkedStream (kwskit/stream/chunking.py) with
// OnnxStreamer's model call (kwskit/runtime/onnx_model.py), so the same samples give the same
// frames, times and end-of-stream flush.
import * as ort from "./vendor/ort.wasm.bundle.min.mjs";

// The kernels from the local vendor/ folder (works offline); the bundle carries its own
// Emscripten glue, so only the .wasm is named (a path prefix would fetch the glue too). One
// thread: threads need SharedArrayBuffer, hence cross-origin isolation headers.
ort.env.wasm.wasmPaths = { wasm: new URL("./vendor/ort-wasm-simd-threaded.wasm", import.meta.url).href };
ort.env.wasm.numThreads = 1;

const WARMUP_CALLS = 100;  // model calls on zeros at load (~0.1-0.2 s)

// card state dtype -> typed array (int64 states are BigInt64Array in onnxruntime-web)
const ARRAYS = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array };

function initialState(s) {
  const Arr = ARRAYS[s.dtype];
  if (!Arr) throw new Error(`state ${s.name}: dtype ${s.dtype} is not supported by the page`);
  const size = s.shape.reduce((a, b) => a * b, 1);
  const value = s.init === "-inf" ? -Infinity : s.init;
  return new ort.Tensor(s.dtype, new Arr(size).fill(Arr === BigInt64Array ? BigInt(value) : value), s.shape);
}

export class StreamModel {
  // session: ort.InferenceSession of the exported streaming model; card: its card (card.json).
  constructor(session, card) {
    this.session = session;
    this.card = card;
    this.sampleRate = card.sample_rate;
    this.unit = card.step_samples;   // samples per output frame
    this.feed = card.chunk_samples;  // samples per model call
    this.warmup = card.warmup_frames;
    this.win = card.frame_win;
    this.leftPad = card.frame_left_pad;
    this.computeMs = 0;              // time spent in model calls since load
    this.reset();
  }

  static async load(modelUrl = "model.onnx", cardUrl = "card.json") {
    const card = await (await fetch(cardUrl)).json();
    const session = await ort.InferenceSession.create(modelUrl, { executionProviders: ["wasm"] });
    const model = new StreamModel(session, card);
    // Warm up before the first real chunk: the first call allocates, and the WASM engine
    // compiles hot code again, optimised, only after it has run a while (measured in Chromium:
    // a cold model took 2.5x longer per chunk over its first seconds).
    const zeros = new Float32Array(model.feed);
    for (let i = 0; i < WARMUP_CALLS; i++) await model.run(zeros);
    model.computeMs = 0;
    model.reset();
    return model;
  }

  // ChunkedStream.reset
  reset() {
    this.states = this.card.states.map(initialState);
    this.buf = new Float32Array(0);
    this.skip = this.warmup;  // warm-up frames still to drop
    this.samplesIn = 0;
    this.framesOut = 0;
    this.flushed = false;
  }

  // ChunkedStream.frame_time: centre of the feature frame output frame j is aligned with
  frameTime(j) {
    return (j * this.unit - this.leftPad + this.win / 2) / this.sampleRate;
  }

  // ChunkedStream._frames_by: output frames whose time lies at or before `samples`
  framesBy(samples) {
    return Math.max(0, Math.floor((samples + this.leftPad - this.win / 2) / this.unit) + 1);
  }

  // OnnxStreamer._run for one chunk of exactly `feed` samples: (frames) rows of class scores
  async run(chunk) {
    const t0 = performance.now();
    const feeds = { audio: new ort.Tensor("float32", chunk, [1, this.feed]) };
    this.card.states.forEach((s, i) => { feeds[s.name] = this.states[i]; });
    const out = await this.session.run(feeds);
    this.states = this.card.states.map((s) => out[`${s.name}_out`]);
    const [, classes, frames] = out.probs.dims;  // (1, classes, frames)
    const p = out.probs.data;
    const rows = [];
    for (let f = 0; f < frames; f++) {
      const row = new Float32Array(classes);
      for (let c = 0; c < classes; c++) row[c] = p[c * frames + f];
      rows.push(row);
    }
    this.computeMs += performance.now() - t0;
    return rows;
  }

  // ChunkedStream.step: feed any number of samples; returns {scores: rows, times} of the
  // frames that became computable. Calls must not overlap (await each one).
  async step(samples) {
    if (this.flushed) throw new Error("this stream was flushed; reset() starts a new one");
    this.samplesIn += samples.length;
    const start = this.framesOut;
    const buf = new Float32Array(this.buf.length + samples.length);
    buf.set(this.buf);
    buf.set(samples, this.buf.length);
    let scores = [];
    let i = 0;
    for (; i + this.feed <= buf.length; i += this.feed) {
      scores.push(...await this.run(buf.slice(i, i + this.feed)));
    }
    this.buf = buf.slice(i);
    const drop = Math.min(this.skip, scores.length);
    this.skip -= drop;
    scores = scores.slice(drop);
    this.framesOut += scores.length;
    return { scores, times: scores.map((_, k) => this.frameTime(start + k)) };
  }

  // ChunkedStream.flush_samples: zeros that emit every frame up to the end of the audio
  flushSamples() {
    const last = this.framesBy(this.samplesIn);
    if (!this.samplesIn || last <= this.framesOut) return 0;
    const need = Math.max(0, (last + this.warmup) * this.unit - this.samplesIn);
    const pending = this.buf.length;
    return need ? Math.ceil((pending + need) / this.feed) * this.feed - pending : 0;
  }

  // ChunkedStream.flush: end the stream; never report a frame past the end of the audio
  async flush() {
    const real = this.samplesIn;
    const out = await this.step(new Float32Array(this.flushSamples()));
    this.samplesIn = real;
    const keep = out.times.map((t) => t <= real / this.sampleRate + 1e-9);
    const dropped = keep.filter((k) => !k).length;
    this.framesOut -= dropped;
    this.flushed = true;
    return { scores: out.scores.filter((_, k) => keep[k]), times: out.times.filter((_, k) => keep[k]) };
  }
}
