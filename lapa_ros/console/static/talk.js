// Push-to-talk: record the browser microphone with WebAudio while the button is held, then
// 16 kHz mono 16-bit PCM WAV for the console's recogniser (the same one lapa_speech uses).
"use strict";

const Talk = (() => {
  const RATE = 16000;
  let ctx = null, source = null, node = null, stream = null, chunks = [], inputRate = RATE;

  async function start() {
    stream = await navigator.mediaDevices.getUserMedia({audio: {channelCount: 1, echoCancellation: false,
                                                                noiseSuppression: false, autoGainControl: false}});
    ctx = new AudioContext();
    inputRate = ctx.sampleRate;
    source = ctx.createMediaStreamSource(stream);
    node = ctx.createScriptProcessor(4096, 1, 1);
    chunks = [];
    node.onaudioprocess = e => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    source.connect(node); node.connect(ctx.destination);
  }

  async function stop() {
    if (!ctx) return null;
    source.disconnect(); node.disconnect();
    stream.getTracks().forEach(t => t.stop());
    await ctx.close();
    ctx = null;
    const n = chunks.reduce((a, c) => a + c.length, 0), all = new Float32Array(n);
    let o = 0; for (const c of chunks) { all.set(c, o); o += c.length; }
    return wav(resample(all, inputRate, RATE), RATE);
  }

  function resample(x, from, to) {
    if (from === to) return x;
    // average over each output sample's span (a box low-pass), then pick: enough for speech
    const ratio = from / to, out = new Float32Array(Math.floor(x.length / ratio));
    for (let i = 0; i < out.length; i++) {
      const a = Math.floor(i * ratio), b = Math.min(x.length, Math.floor((i + 1) * ratio));
      let s = 0; for (let j = a; j < b; j++) s += x[j];
      out[i] = b > a ? s / (b - a) : 0;
    }
    return out;
  }

  function wav(samples, rate) {
    const buf = new ArrayBuffer(44 + 2 * samples.length), v = new DataView(buf);
    const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
    str(0, "RIFF"); v.setUint32(4, 36 + 2 * samples.length, true); str(8, "WAVE");
    str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
    v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
    str(36, "data"); v.setUint32(40, 2 * samples.length, true);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      v.setInt16(44 + 2 * i, s < 0 ? s * 32768 : s * 32767, true);
    }
    return new Blob([buf], {type: "audio/wav"});
  }

  return {start, stop, recording: () => ctx !== null};
})();
