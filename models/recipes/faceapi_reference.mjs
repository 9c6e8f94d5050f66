// face-api.js's own output for the rebuilt ONNX net to be checked against (models/recipes/faceapi_expression.py
// --check). Runs the tarball's bundled tfjs on its CPU backend; no browser, no canvas: inputs are raw tensors.
//   node faceapi_reference.mjs <unpacked package dir> <input.bin: N x 112 x 112 x 3 uint8 RGB> <output.json>
import fs from 'fs';

const [pkg, inputPath, outputPath] = process.argv.slice(2);
// The ESM bundle picks node or browser from `process`; its node path needs modules it does not bundle.
const saved = globalThis.process;
globalThis.process = undefined;
const faceapi = await import(`${pkg}/dist/face-api.esm.js`);
globalThis.process = saved;
const tf = faceapi.tf;
tf.env().setPlatform('custom', {
  fetch: globalThis.fetch, now: () => performance.now(),
  encode: (s) => new TextEncoder().encode(s), decode: (b, e) => new TextDecoder(e).decode(b),
  isTypedArray: (a) => ArrayBuffer.isView(a) && !(a instanceof DataView),
});
class Unused {}
faceapi.env.setEnv({
  Canvas: Unused, CanvasRenderingContext2D: Unused, Image: Unused, ImageData: Unused, Video: Unused,
  createCanvasElement: () => ({}), createImageElement: () => ({}), createVideoElement: () => ({}),
  fetch: globalThis.fetch, readFile: () => { throw new Error('not used'); },
});
await tf.setBackend('cpu');
await tf.ready();
const spec = JSON.parse(fs.readFileSync(`${pkg}/model/face_expression_model-weights_manifest.json`));
const buf = fs.readFileSync(`${pkg}/model/face_expression_model.bin`);
const net = faceapi.nets.faceExpressionNet;
await net.loadFromWeightMap(tf.io.decodeWeights(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength),
  spec[0].weights));
const raw = fs.readFileSync(inputPath);
const n = raw.length / (112 * 112 * 3);
const x = tf.tensor4d(new Uint8Array(raw), [n, 112, 112, 3], 'int32');
const out = net.forwardInput(await faceapi.toNetInput(tf.unstack(x)));
fs.writeFileSync(outputPath, JSON.stringify(Array.from(out.dataSync())));
