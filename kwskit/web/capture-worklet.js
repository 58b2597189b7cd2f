// AudioWorklet (audio thread): posts every render quantum of the microphone to the page as
// mono float32 samples (the mean of the channels, as kwskit's audio_blocks downmixes). The
// AudioContext runs at the model's rate (16 kHz), so the browser has already resampled.
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const channels = inputs[0];
    if (channels.length) {
      const mono = new Float32Array(channels[0].length);
      for (const ch of channels) for (let i = 0; i < mono.length; i++) mono[i] += ch[i] / channels.length;
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;  // keep running while the microphone is connected
  }
}
registerProcessor("kws-capture", Capture);
