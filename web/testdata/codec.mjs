// Checks caps.js's frame codec against the hex examples of docs/PROTOCOL.md:
// each one decodes (whole, byte by byte, and all of them in one chunk) and
// encodes back to the same bytes. Run by web/codec_test.go with node.
import { readFileSync } from 'node:fs';
import { encodeFrame, FrameReader, parseFrame, CapsError } from '../caps.js';

const spec = readFileSync(process.argv[2], 'utf8');
const blocks = [...spec.matchAll(/```hex\n([\s\S]*?)```/g)].map((m) =>
  Uint8Array.from(m[1].trim().split(/\s+/).map((h) => parseInt(h, 16))));
const hex = (b) => Buffer.from(b).toString('hex');
const fail = (msg) => {
  console.log(JSON.stringify({ ok: false, msg }));
  process.exit(1);
};
if (blocks.length < 10) fail(`only ${blocks.length} hex examples found`);

for (const [i, bytes] of blocks.entries()) {
  const whole = new FrameReader().push(bytes);
  if (whole.length !== 1) fail(`example ${i}: ${whole.length} frames`);
  const r = new FrameReader();
  const split = [];
  for (const b of bytes) split.push(...r.push(Uint8Array.of(b)));
  if (split.length !== 1) fail(`example ${i} byte by byte: ${split.length} frames`);
  const again = encodeFrame(whole[0]);
  if (hex(again) !== hex(bytes)) fail(`example ${i}: re-encoded ${hex(again)}, want ${hex(bytes)}`);
}
const all = new Uint8Array(blocks.reduce((n, b) => n + b.length, 0));
let at = 0;
for (const b of blocks) {
  all.set(b, at);
  at += b.length;
}
if (new FrameReader().push(all).length !== blocks.length) fail('coalesced examples');

// Malformed input is refused with the protocol's codes.
const refused = (bytes, max) => {
  try {
    new FrameReader(max).push(Uint8Array.from(bytes));
    return 'accepted';
  } catch (e) {
    return e instanceof CapsError ? e.code : String(e);
  }
};
const cases = {
  short: refused([0, 0, 0, 6, 10, 0, 0, 0, 0, 0]),
  large: refused([0, 0, 0, 200, 10], 100),
  op: refused([0, 0, 0, 7, 0x42, 0, 0, 0, 0, 0, 0]),
  field: refused([0, 0, 0, 7, 6, 0, 0, 0, 5, 0, 0]),
};
if (cases.short !== 'bad_frame' || cases.large !== 'frame_too_large' || cases.op !== 'bad_frame' || cases.field !== 'bad_frame') {
  fail(`malformed frames: ${JSON.stringify(cases)}`);
}
// 64-bit ids survive (durable sids are above 2^62).
const big = (1n << 62n) + 7n;
const f = parseFrame(encodeFrame({ op: 6, id: big, seq: 2n ** 64n - 1n }).subarray(4));
if (f.id !== big || f.seq !== 2n ** 64n - 1n) fail(`64-bit ids: ${f.id} ${f.seq}`);
console.log(JSON.stringify({ ok: true, examples: blocks.length }));
