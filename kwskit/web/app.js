// The page: microphone or dropped file -> StreamModel (stream.js) -> Detector (detector.js)
// -> bars, plot, detection list. Both sources go through feed() and, when they end, finish(),
// as kwskit's run_stream does (kwskit/stream/longaudio.py). window.kws is the API tests use.
import { StreamModel } from "./stream.js";
import { Detector } from "./detector.js";
import { drawPlot } from "./plot.js";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#c2255c",
                "#5c940d", "#364fc7", "#862e9c"];
const LIVE_WINDOW_S = 10;  // the live plot scrolls over the last 10 s
const KEEP_AUDIO_S = 600;  // getCaptured() keeps a session's first 10 min (38 MB), not more

let model, detector, keywords;
let track;                         // the stream on screen: times, scores, detections
let queue = Promise.resolve();     // model calls run one after another, never overlapping
let mic = null;                    // {ctx, stream, node} while the microphone is on
let captured = [];                 // the microphone's 16-kHz samples, block by block
let fileRun = Promise.resolve(null);  // the last file chosen or dropped on the page

async function init() {
  const [m, settings] = await Promise.all([StreamModel.load(),
                                           fetch("settings.json").then((r) => r.json())]);
  model = m;
  detector = new Detector(model.card.labels, settings);
  keywords = detector.keywords.map((index, n) => ({ index, label: model.card.labels[index],
                                                   color: COLORS[n % COLORS.length] }));
  buildBars();
  showCard();
  newTrack("none", false);
  $("mic").disabled = false;
  status("ready: start the microphone or drop an audio file");
}

function status(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ streaming
function newTrack(source, live) {
  model.reset();
  detector.reset();
  track = { source, live, times: [], scores: [], detections: [], seconds: 0, computeMs: 0 };
  $("detections").replaceChildren();
  redraw();
}

// run_stream's consume(): frames to the detector, the track and the screen
function consume({ scores, times }) {
  addDetections(detector.update(scores, times));
  for (let i = 0; i < times.length; i++) { track.times.push(times[i]); track.scores.push(scores[i]); }
  redraw();
}

async function feed(samples) {
  const c0 = model.computeMs;
  consume(await model.step(samples));
  track.computeMs += model.computeMs - c0;
  track.seconds += samples.length / model.sampleRate;
}

// the end of a stream: flush the model (zeros up to the last frame), then the detector
async function finish() {
  const c0 = model.computeMs;
  consume(await model.flush());
  track.computeMs += model.computeMs - c0;
  addDetections(detector.finish());
  status(`${track.source}: ${track.seconds.toFixed(1)} s, ${track.detections.length} detection(s), `
         + `inference ${rtfText()}`);
}

function rtfText() {
  const rtf = track.computeMs / 1000 / Math.max(track.seconds, 1e-9);
  return `${(rtf * 1000).toFixed(0)} ms per s of audio (RTF ${rtf.toFixed(3)})`;
}

// run `job` after every job queued before it; its promise rejects on error, the queue goes on
function enqueue(job) {
  const run = queue.then(job);
  queue = run.catch((e) => { status(`error: ${e.message}`); console.error(e); });
  return run;
}

// ------------------------------------------------------------------ microphone
// The AudioContext runs at the model's rate, so the browser resamples the microphone (its
// own high-quality resampler, no code here); the worklet only downmixes and posts blocks.
async function startMic() {
  if (mic) return;
  $("mic").disabled = true;  // one start at a time
  const ctx = new AudioContext({ sampleRate: model.sampleRate });
  try {
    await ctx.audioWorklet.addModule("capture-worklet.js");
    // no echo cancellation, noise suppression or gain control: the model hears the raw signal
    const stream = await navigator.mediaDevices.getUserMedia({ audio: {
      channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    const node = new AudioWorkletNode(ctx, "kws-capture", { numberOfOutputs: 0 });
    await enqueue(() => { newTrack("microphone", true); captured = []; });
    let kept = 0;
    node.port.onmessage = (e) => {
      if (kept < KEEP_AUDIO_S * model.sampleRate) { captured.push(e.data); kept += e.data.length; }
      enqueue(() => feed(e.data));
    };
    ctx.createMediaStreamSource(stream).connect(node);
    await ctx.resume();
    mic = { ctx, stream, node };
    $("mic").textContent = "Stop"; $("mic").classList.add("on");
    status("listening…");
  } catch (e) {
    ctx.close();
    throw e;
  } finally {
    $("mic").disabled = false;
  }
}

async function stopMic() {
  if (!mic) return;
  const { ctx, stream, node } = mic;
  mic = null;
  node.port.onmessage = null;
  stream.getTracks().forEach((t) => t.stop());
  await ctx.close();
  $("mic").textContent = "Start microphone"; $("mic").classList.remove("on");
  await enqueue(finish);
}

// ------------------------------------------------------------------ files
// decodeAudioData in a context at the model's rate resamples the file (none for 16-kHz files:
// the samples are then exactly what kwskit reads); channels are averaged as in audio_blocks.
async function decode(bytes) {
  const buf = await new OfflineAudioContext(1, 1, model.sampleRate).decodeAudioData(bytes);
  const mono = new Float32Array(buf.length);
  for (let c = 0; c < buf.numberOfChannels; c++) {
    const x = buf.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += x[i] / buf.numberOfChannels;
  }
  return mono;
}

// A file or URL through the live code path (100-ms blocks, as `kwskit stream` reads files),
// as fast as the model runs, then flushed to its last frame.
async function runFile(src) {
  await stopMic();
  const name = typeof src === "string" ? src : src.name || "audio";
  const bytes = typeof src === "string" ? await (await fetch(src)).arrayBuffer() : await src.arrayBuffer();
  const samples = await decode(bytes);
  const block = Math.round(model.sampleRate / 10);
  const t0 = performance.now();
  await enqueue(async () => {
    newTrack(name, false);
    status(`running ${name}…`);
    for (let i = 0; i < samples.length; i += block) {
      await feed(samples.subarray(i, i + block));
      if ((i / block) % 20 === 19) await new Promise((r) => setTimeout(r));  // let the page paint
    }
    await finish();
  });
  return { times: track.times, scores: track.scores.map((r) => Array.from(r)),
           detections: track.detections, seconds: track.seconds,
           rtf: track.computeMs / 1000 / track.seconds, wall_s: (performance.now() - t0) / 1000 };
}

// ------------------------------------------------------------------ the screen
function buildBars() {
  $("bars").replaceChildren(...keywords.map((kw) => {
    const row = document.createElement("div");
    row.className = "kw";
    row.innerHTML = `<span class="name"></span><div class="bar"><div class="fill"></div>`
      + `<div class="tick"></div></div><input type="range" min="0" max="1" step="0.01"><output></output>`;
    row.querySelector(".name").textContent = kw.label;
    row.querySelector(".fill").style.background = kw.color;
    const slider = row.querySelector("input");
    slider.setAttribute("aria-label", `threshold for ${kw.label}`);
    slider.oninput = () => setThreshold({ [kw.label]: Number(slider.value) });
    Object.assign(kw, { row, slider, fill: row.querySelector(".fill"),
                        tick: row.querySelector(".tick"), value: row.querySelector("output") });
    return row;
  }));
  setThreshold({});
}

// thresholds: one number for every keyword, or {keyword: p}; the sliders follow
function setThreshold(thr) {
  for (const kw of keywords) {
    const p = typeof thr === "number" ? thr : thr[kw.label];
    if (p !== undefined) detector.thresholds[kw.index] = p;
    const t = detector.thresholds[kw.index];
    kw.slider.value = t;
    kw.value.textContent = t.toFixed(2);
    kw.tick.style.left = `${t * 100}%`;
  }
}

function addDetections(found) {
  for (const d of found) {
    track.detections.push(d);
    const li = document.createElement("li");
    li.className = "new";
    li.innerHTML = "<b></b><span></span><span></span>";
    li.children[0].textContent = d.keyword;
    li.children[0].style.color = keywords.find((k) => k.label === d.keyword).color;
    li.children[1].textContent = `${d.start.toFixed(2)} s`;
    li.children[2].textContent = d.score.toFixed(2);
    $("detections").prepend(li);
  }
}

let drawPending = false;
function redraw() {  // at most once per animation frame
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    const sm = detector.smoothed;
    for (const kw of keywords) {
      const p = sm ? sm[kw.index] : 0;
      kw.fill.style.width = `${p * 100}%`;
      kw.row.classList.toggle("above", p >= detector.thresholds[kw.index]);
    }
    const end = track.times.length ? track.times[track.times.length - 1] : 0;
    const [t0, t1] = track.live || !track.times.length
      ? [Math.max(0, end - LIVE_WINDOW_S), Math.max(end, LIVE_WINDOW_S)] : [0, Math.max(end, 1)];
    drawPlot($("plot"), track, keywords, t0, t1);
    if (track.live && track.seconds) status(`listening: ${track.seconds.toFixed(1)} s, inference ${rtfText()}`);
  });
}

function showCard() {
  const c = model.card, ms = (s) => `${(s * 1000).toFixed(0)} ms`;
  const rows = [
    ["model", c.model || c.file_name], ["file", `${c.file_name}, ${(c.file_bytes / 1e3).toFixed(1)} kB`],
    ["labels", c.labels.join(", ")], ["sample rate", `${c.sample_rate} Hz`],
    ["chunk", `${c.chunk_samples} samples (${ms(c.chunk_samples / c.sample_rate)})`],
    ["frame step", ms(c.frame_step_s)], ["delay", ms(c.delay_s)],
    ["warm-up", `${c.warmup_frames} frames`], ["states", `${c.states.length} tensors`],
    ["kwskit", c.kwskit_version]];
  $("card").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    return [dt, dd];
  }));
}

$("mic").onclick = () => (mic ? stopMic() : startMic().catch((e) => status(`microphone: ${e.message}`)));
function pickFile(file) {
  if (!file) return;
  fileRun = runFile(file);
  fileRun.catch((e) => status(`${file.name}: ${e.message}`));  // e.g. not audio
}
$("file").onchange = (e) => pickFile(e.target.files[0]);
const drop = $("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  pickFile(e.dataTransfer.files[0]);
};

function concat(blocks) {
  const out = new Float32Array(blocks.reduce((n, b) => n + b.length, 0));
  let i = 0;
  for (const b of blocks) { out.set(b, i); i += b.length; }
  return out;
}

window.kws = {
  ready: init().catch((e) => { status(`error: ${e.message}`); throw e; }),
  card: () => model.card,
  runFile,      // (URL, File or Blob) -> {times, scores, detections, seconds, rtf, wall_s}
  lastFile: () => fileRun,  // the result of the last file chosen or dropped on the page
  startMic,
  stopMic,
  setThreshold,
  // everything of the stream on screen so far (live: the frames computed up to now)
  getFrames: () => ({ times: track.times, scores: track.scores.map((r) => Array.from(r)) }),
  getDetections: () => track.detections,
  getCaptured: () => Array.from(concat(captured)),
  stats: () => ({ seconds: track.seconds, compute_ms: track.computeMs,
                  rtf: track.computeMs / 1000 / Math.max(track.seconds, 1e-9) }),
  idle: () => queue,  // resolves once every block received so far is scored
};
