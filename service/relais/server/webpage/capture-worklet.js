// AudioWorklet: the input (mixed to mono by the node's channelCount: 1) as 16-bit PCM frames
// of FRAME_S seconds at the context's own rate (the device rate: no resampling here, the
// server resamples). Each frame is posted to the page as a transferred ArrayBuffer.
const FRAME_S = 0.05;

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate * FRAME_S);
    this.frame = new Int16Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;  // not connected yet
    for (let i = 0; i < channel.length; i++) {
      const s = Math.max(-1, Math.min(1, channel[i]));
      this.frame[this.filled++] = s < 0 ? s * 32768 : s * 32767;
      if (this.filled === this.size) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);  // transferred: detached here
        this.frame = new Int16Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
