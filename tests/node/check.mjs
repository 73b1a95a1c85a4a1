#!/usr/bin/env node
// Cross-language proof: every committed models/<name>/model.onnx, run in onnxruntime-node (CPU), must give
// the Keras outputs stored beside it in models/<name>/golden.npz.
//
//   node check.mjs [--self-test] [MODELS_DIR]
//
// golden.npz holds `input.<input name>` (int64, fed as BigInt64Array tensors) and `output.<output name>`
// (float32 Keras outputs; bool masks named `mask` or `<layer>_mask`). Floats must agree within 1e-5
// absolute; masks and any other non-float output must be exactly equal, with the same dtype and shape.
// The model's input and output names must match the golden keys one for one.
//
// A model that takes text (texts.json beside it: the golden strings; the artifact's `embed_runtime.text`
// metadata: the declared spec) is also run from its strings: the check reads the spec from the ONNX file,
// tokenizes the strings itself (standardize, split, lookup, padding, as the spec and README say: ASCII-only
// lowercasing, ASCII punctuation and ASCII whitespace; a StringLookup's texts.json holds rows of tokens;
// with num_oov_indices > 1 an out-of-vocabulary token's id comes from FarmHash Fingerprint64, implemented
// below), requires the ids to equal Keras's (`input.<name>`) one for one, and runs the model on them.
// Where the spec says `in_graph` (the graph does the lookup itself, with ai.onnx.ml LabelEncoder), the
// model takes the strings: they are fed as string tensors (rows of tokens padded with the mask token, or
// texts as [n, 1]) instead of the ids, which are still checked; such a model has no run from ids.
//
// Exits 1 on any mismatch, on a model.onnx without golden.npz (or the reverse), on an unreadable file, or
// when no fixture is found at all. --self-test first runs the normal check, then perturbs each golden
// output in memory (one float by 1e-3, one mask value flipped, one float by 1e-6, a tenth of the tolerance) and
// exits 1 unless the comparison rejects the first two and accepts the third.

import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateRawSync } from 'node:zlib';

import ort from 'onnxruntime-node';

const HERE = dirname(fileURLToPath(import.meta.url));
const DEFAULT_MODELS = resolve(HERE, '..', '..', 'models');
const FLOAT_ATOL = 1e-5;
const SMALL_NUDGE = 1e-6; // well inside FLOAT_ATOL: the self-test expects it accepted

class FixtureError extends Error {}

// ---------------------------------------------------------------- .npz (zip) reading, stored or deflated

function readZip(buf, what) {
  // Find the end-of-central-directory record (it may be followed by a comment of up to 64 KiB).
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (buf.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new FixtureError(`${what}: not a zip file (no end of central directory)`);
  let count = buf.readUInt16LE(eocd + 10);
  let cdOffset = buf.readUInt32LE(eocd + 16);
  // Zip64: numpy writes its members with force_zip64, and big archives need the zip64 directory too.
  const locator = eocd - 20;
  if (locator >= 0 && buf.readUInt32LE(locator) === 0x07064b50) {
    const z64 = Number(buf.readBigUInt64LE(locator + 8));
    if (buf.readUInt32LE(z64) !== 0x06064b50) throw new FixtureError(`${what}: bad zip64 directory record`);
    count = Number(buf.readBigUInt64LE(z64 + 32));
    cdOffset = Number(buf.readBigUInt64LE(z64 + 48));
  }
  const entries = new Map();
  let p = cdOffset;
  for (let n = 0; n < count; n++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new FixtureError(`${what}: bad central directory entry`);
    const flags = buf.readUInt16LE(p + 8);
    const method = buf.readUInt16LE(p + 10);
    let compSize = buf.readUInt32LE(p + 20);
    let size = buf.readUInt32LE(p + 24);
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    let localOffset = buf.readUInt32LE(p + 42);
    const name = buf.toString('utf8', p + 46, p + 46 + nameLen);
    // Zip64 extended information: only the fields whose 32-bit value is 0xffffffff are present, in order.
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = buf.readUInt16LE(e);
      const len = buf.readUInt16LE(e + 2);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === 0xffffffff) { size = Number(buf.readBigUInt64LE(q)); q += 8; }
        if (compSize === 0xffffffff) { compSize = Number(buf.readBigUInt64LE(q)); q += 8; }
        if (localOffset === 0xffffffff) { localOffset = Number(buf.readBigUInt64LE(q)); q += 8; }
      }
      e += 4 + len;
    }
    if (flags & 0x1) throw new FixtureError(`${what}: ${name} is encrypted`);
    if (buf.readUInt32LE(localOffset) !== 0x04034b50) throw new FixtureError(`${what}: bad local header for ${name}`);
    const dataStart = localOffset + 30 + buf.readUInt16LE(localOffset + 26) + buf.readUInt16LE(localOffset + 28);
    const raw = buf.subarray(dataStart, dataStart + compSize);
    let data;
    if (method === 0) data = raw;
    else if (method === 8) data = inflateRawSync(raw);
    else throw new FixtureError(`${what}: ${name} uses zip compression method ${method} (only stored and deflate are supported)`);
    if (data.length !== size) throw new FixtureError(`${what}: ${name} is ${data.length} bytes, the directory says ${size}`);
    entries.set(name, data);
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

// ---------------------------------------------------------------- .npy parsing

const NPY_DTYPES = {
  // descr (little endian or byte-free) -> [onnxruntime tensor type, typed array constructor]
  '<f4': ['float32', Float32Array],
  '<f8': ['float64', Float64Array],
  '<i8': ['int64', BigInt64Array],
  '<i4': ['int32', Int32Array],
  '<i2': ['int16', Int16Array],
  '|i1': ['int8', Int8Array],
  '<u8': ['uint64', BigUint64Array],
  '<u4': ['uint32', Uint32Array],
  '<u2': ['uint16', Uint16Array],
  '|u1': ['uint8', Uint8Array],
  '|b1': ['bool', Uint8Array],
};

function parseNpy(buf, what) {
  if (buf.length < 10 || buf[0] !== 0x93 || buf.toString('latin1', 1, 6) !== 'NUMPY') {
    throw new FixtureError(`${what}: not a .npy array`);
  }
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = buf.toString(major >= 3 ? 'utf8' : 'latin1', headerStart, headerStart + headerLen);
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new FixtureError(`${what}: cannot read the .npy header ${JSON.stringify(header)}`);
  }
  if (fortran === 'True') throw new FixtureError(`${what}: Fortran-ordered arrays are not supported`);
  const known = NPY_DTYPES[descr.replace(/^=/, '<')];
  if (!known) throw new FixtureError(`${what}: unsupported dtype ${descr} (need little-endian numbers or bool)`);
  const [type, Ctor] = known;
  const dims = shapeText.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  const n = dims.reduce((a, b) => a * b, 1);
  const start = headerStart + headerLen;
  const bytes = n * Ctor.BYTES_PER_ELEMENT;
  if (buf.length - start !== bytes) {
    throw new FixtureError(`${what}: shape [${dims}] of ${descr} needs ${bytes} bytes, the file holds ${buf.length - start}`);
  }
  // Copy so the typed array is aligned and owns its memory.
  const data = new Ctor(n);
  new Uint8Array(data.buffer).set(buf.subarray(start, start + bytes));
  return { type, dims, data };
}

function loadGolden(path) {
  const entries = readZip(readFileSync(path), path);
  const inputs = new Map();
  const outputs = new Map();
  for (const [member, bytes] of entries) {
    const key = member.replace(/\.npy$/, '');
    const arr = parseNpy(bytes, `${path}:${member}`);
    if (key.startsWith('input.')) inputs.set(key.slice('input.'.length), arr);
    else if (key.startsWith('output.')) outputs.set(key.slice('output.'.length), arr);
    else throw new FixtureError(`${path}: unexpected key ${key} (keys must start with input. or output.)`);
  }
  if (inputs.size === 0) throw new FixtureError(`${path}: no input.* arrays`);
  if (outputs.size === 0) throw new FixtureError(`${path}: no output.* arrays`);
  return { inputs, outputs };
}

// ---------------------------------------------------------------- comparison

const FLOAT_TYPES = new Set(['float32', 'float64', 'float16']);

function sameDims(a, b) {
  return a.length === b.length && a.every((d, i) => Number(d) === Number(b[i]));
}

// Returns { ok, maxAbsDiff, detail }. maxAbsDiff is the largest absolute difference over the elements
// (Infinity where a NaN meets a number, or where shapes or dtypes differ and nothing can be compared).
function compareOutput(name, expected, actual) {
  if (!sameDims(expected.dims, actual.dims)) {
    return { ok: false, maxAbsDiff: Infinity, detail: `${name}: shape [${actual.dims}] from onnxruntime-node, [${expected.dims}] in golden` };
  }
  if (expected.type === 'bool' || !FLOAT_TYPES.has(expected.type)) {
    if (actual.type !== expected.type) {
      return { ok: false, maxAbsDiff: Infinity, detail: `${name}: dtype ${actual.type} from onnxruntime-node, ${expected.type} in golden` };
    }
    // bool tensors come back as Uint8Array in onnxruntime-node; tolerate plain boolean arrays as well.
    const norm = expected.type === 'bool' ? (v) => (v ? 1 : 0) : (v) => v;
    let bad = 0;
    let first = -1;
    for (let i = 0; i < expected.data.length; i++) {
      if (norm(expected.data[i]) !== norm(actual.data[i])) { bad++; if (first < 0) first = i; }
    }
    if (bad) {
      return { ok: false, maxAbsDiff: Infinity, detail: `${name}: ${bad} of ${expected.data.length} ${expected.type} values differ (first at flat index ${first})` };
    }
    return { ok: true, maxAbsDiff: 0, detail: `${name}: ${expected.type} [${expected.dims}] equal` };
  }
  if (!FLOAT_TYPES.has(actual.type)) {
    return { ok: false, maxAbsDiff: Infinity, detail: `${name}: dtype ${actual.type} from onnxruntime-node, ${expected.type} in golden` };
  }
  let max = 0;
  let worst = -1;
  for (let i = 0; i < expected.data.length; i++) {
    const e = expected.data[i];
    const a = actual.data[i];
    let d;
    if (Number.isNaN(e) || Number.isNaN(a)) d = Number.isNaN(e) && Number.isNaN(a) ? 0 : Infinity;
    else if (e === a) d = 0; // equal infinities
    else d = Math.abs(e - a);
    if (!(d <= max)) { max = d; worst = i; }
  }
  const ok = max <= FLOAT_ATOL;
  const where = worst >= 0 && max > 0 ? ` at flat index ${worst}` : '';
  return { ok, maxAbsDiff: max, detail: `${name}: ${expected.type} [${expected.dims}] max abs diff ${max.toExponential(2)}${where}${ok ? '' : ` > ${FLOAT_ATOL.toExponential()}`}` };
}

function compareAll(golden, results) {
  const problems = [];
  let floatMax = 0; // over the float outputs that could be compared
  let floats = 0;
  let exact = 0; // masks and other exactly compared outputs
  let exactBad = 0;
  for (const [name, expected] of golden.outputs) {
    const actual = results[name];
    if (!actual) { problems.push(`output ${name} is in golden.npz but the model has no such output`); continue; }
    const r = compareOutput(name, expected, actual);
    if (!r.ok) problems.push(r.detail);
    if (FLOAT_TYPES.has(expected.type)) {
      floats++;
      if (!(r.maxAbsDiff <= floatMax)) floatMax = r.maxAbsDiff;
    } else {
      exact++;
      if (!r.ok) exactBad++;
    }
  }
  for (const name of Object.keys(results)) {
    if (!golden.outputs.has(name)) problems.push(`model output ${name} has no output.${name} in golden.npz`);
  }
  const parts = [];
  if (floats) parts.push(`max abs diff ${floatMax.toExponential(2)} over ${floats} float output(s)`);
  if (exact) parts.push(exactBad ? `${exactBad} of ${exact} mask(s) differ` : `${exact} mask(s) equal`);
  return { ok: problems.length === 0, summary: parts.join(', '), problems };
}

// ---------------------------------------------------------------- text: the declared spec, in JS

function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= buf.length) throw new FixtureError('truncated protobuf varint');
    const b = buf[pos++];
    value += (b & 0x7f) * scale;
    if (!(b & 0x80)) return [value, pos];
    scale *= 128;
  }
}

function protoFields(buf) {
  // Top-level [field number, wire type, value] of a protobuf message; length-delimited values as bytes.
  const fields = [];
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) { let v; [v, pos] = readVarint(buf, pos); fields.push([field, wire, v]); }
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      let n;
      [n, pos] = readVarint(buf, pos);
      fields.push([field, wire, buf.subarray(pos, pos + n)]);
      pos += n;
    } else throw new FixtureError(`unsupported protobuf wire type ${wire}`);
  }
  return fields;
}

function onnxMetadata(path) {
  // ModelProto.metadata_props (field 14): StringStringEntryProto {key = 1, value = 2}.
  const props = {};
  for (const [field, wire, value] of protoFields(readFileSync(path))) {
    if (field !== 14 || wire !== 2) continue;
    const entry = Object.fromEntries(protoFields(value).map(([f, , v]) => [f, Buffer.from(v).toString('utf8')]));
    props[entry[1]] = entry[2] ?? '';
  }
  return props;
}

const ASCII_PUNCTUATION = /[!"#$%&()*+,\-./:;<=>?@[\\\]^_`{|}~']/g; // Keras's DEFAULT_STRIP_REGEX
const ASCII_WHITESPACE = /[ \t\n\v\f\r]+/; // tf.strings.split: ASCII whitespace only

function tokens(spec, text) {
  if (spec.standardize === 'lower' || spec.standardize === 'lower_and_strip_punctuation') {
    text = text.replace(/[A-Z]+/g, (m) => m.toLowerCase()); // tf.strings.lower: ASCII only
  }
  if (spec.standardize === 'strip_punctuation' || spec.standardize === 'lower_and_strip_punctuation') {
    text = text.replace(ASCII_PUNCTUATION, '');
  }
  if (spec.split === 'whitespace') return text.split(ASCII_WHITESPACE).filter((t) => t !== '');
  if (spec.split === 'character') return Array.from(text); // one token per code point
  if (spec.split === null) return [text];
  throw new FixtureError(`text spec of ${spec.input}: split ${JSON.stringify(spec.split)} is not one this check implements`);
}

// FarmHash Fingerprint64 (farmhashna::Hash64, github.com/google/farmhash) of a Buffer, as a BigInt: the
// hash of TensorFlow's StringToHashBucketFast, with which Keras's StringLookup spreads out-of-vocabulary
// tokens over num_oov_indices ids. All arithmetic modulo 2^64.
const K0 = 0xc3a5c85c97cb3127n;
const K1 = 0xb492b66fbe98f273n;
const K2 = 0x9ae16a3b2f90404fn;
const u64 = (x) => BigInt.asUintN(64, x);
const rot = (v, s) => u64((v >> s) | (v << (64n - s))); // rotate right, 0 < s < 64
const mix = (v) => v ^ (v >> 47n);

function fingerprint64(s) {
  const n = s.length;
  const len = BigInt(n);
  const at = (i) => s.readBigUInt64LE(i);
  const len16 = (u, v, mul) => {
    const a = mix(u64((u ^ v) * mul));
    return u64(mix(u64((v ^ a) * mul)) * mul);
  };
  const mul = u64(K2 + len * 2n);
  if (n === 0) return K2;
  if (n < 4) {
    const y = BigInt(s[0]) + (BigInt(s[n >> 1]) << 8n);
    return u64(mix(u64(y * K2) ^ u64((len + (BigInt(s[n - 1]) << 2n)) * K0)) * K2);
  }
  if (n < 8) return len16(len + (BigInt(s.readUInt32LE(0)) << 3n), BigInt(s.readUInt32LE(n - 4)), mul);
  if (n <= 16) {
    const a = u64(at(0) + K2);
    const b = at(n - 8);
    return len16(u64(rot(b, 37n) * mul + a), u64((rot(a, 25n) + b) * mul), mul);
  }
  if (n <= 64) {
    const a = u64(at(0) * (n <= 32 ? K1 : K2));
    const b = at(8);
    const c = u64(at(n - 8) * mul);
    const d = u64(at(n - 16) * K2);
    const y = u64(rot(u64(a + b), 43n) + rot(c, 30n) + d);
    const z = len16(y, u64(a + rot(u64(b + K2), 18n) + c), mul);
    if (n <= 32) return z;
    const e = u64(at(16) * mul);
    const f = at(24);
    const g = u64(u64(y + at(n - 32)) * mul);
    const h = u64(u64(z + at(n - 24)) * mul);
    return len16(u64(rot(u64(e + f), 43n) + rot(g, 30n) + h), u64(e + rot(u64(f + a), 18n) + g), mul);
  }
  const weak = (p, a, b) => { // WeakHashLen32WithSeeds
    a = u64(a + at(p));
    b = rot(u64(b + a + at(p + 24)), 21n);
    const c = a;
    a = u64(a + at(p + 8) + at(p + 16));
    return [u64(a + at(p + 24)), u64(b + rot(a, 44n) + c)];
  };
  let x = u64(81n * K2 + at(0));
  let y = u64(81n * K1 + 113n);
  let z = u64(mix(u64(y * K2 + 113n)) * K2);
  let v = [0n, 0n];
  let w = [0n, 0n];
  const round = (p, m, last) => {
    x = u64(rot(u64(x + y + v[0] + at(p + 8)), 37n) * m);
    y = u64(rot(u64(y + v[1] + at(p + 48)), 42n) * m);
    x ^= last ? u64(w[1] * 9n) : w[1];
    y = u64(y + (last ? v[0] * 9n : v[0]) + at(p + 40));
    z = u64(rot(u64(z + w[0]), 33n) * m);
    v = weak(p, u64(v[1] * m), u64(x + w[0]));
    w = weak(p + 32, u64(z + w[1]), u64(y + at(p + 16)));
    [x, z] = [z, x];
  };
  const end = Math.floor((n - 1) / 64) * 64;
  for (let p = 0; p < end; p += 64) round(p, K1, false);
  const m = u64(K1 + ((z & 0xffn) << 1n));
  w[0] = u64(w[0] + BigInt((n - 1) & 63));
  v[0] = u64(v[0] + w[0]);
  w[0] = u64(w[0] + v[0]);
  round(n - 64, m, true);
  return len16(u64(len16(v[0], w[0], m) + u64(mix(y) * K0) + z), u64(len16(v[1], w[1], m) + x), m);
}

function tokenize(spec, texts) {
  // TextVectorization: texts, standardized and split; StringLookup: rows of tokens, looked up as they are.
  // A token after the OOV ids has its index; the mask token 0; any other the first OOV id plus its
  // Fingerprint64 modulo num_oov_indices (that is the first OOV id when there is one).
  if (spec.layer_class !== 'TextVectorization' && spec.layer_class !== 'StringLookup') {
    throw new FixtureError(`text spec of ${spec.input}: layer_class ${JSON.stringify(spec.layer_class)} is not one this check implements`);
  }
  const start = spec.mask_token === null ? 0 : 1;
  const n = spec.num_oov_indices;
  const ids = new Map(spec.vocabulary.map((token, i) => [token, i]).slice(start + n));
  if (spec.mask_token !== null) ids.set(spec.mask_token, 0);
  const id = (token) => ids.get(token) ?? (n === 1 ? start : start + Number(fingerprint64(Buffer.from(token, 'utf8')) % BigInt(n)));
  const split = spec.layer_class === 'StringLookup' ? (row) => row : (text) => tokens(spec, text);
  const rows = texts.map((t) => split(t).map(id));
  const length = spec.output_sequence_length ?? Math.max(1, ...rows.map((r) => r.length));
  const data = new BigInt64Array(texts.length * length);
  rows.forEach((row, i) => row.slice(0, length).forEach((id, j) => { data[i * length + j] = BigInt(id); }));
  return { type: 'int64', dims: [texts.length, length], data };
}

function graphStrings(spec, texts) {
  // What a graph doing its own lookup takes: rows of tokens, each short row padded with the mask token
  // (ragged rows need one), or texts as [n, 1].
  if (spec.layer_class !== 'StringLookup') return { type: 'string', dims: [texts.length, 1], data: texts.slice() };
  const width = Math.max(1, ...texts.map((row) => row.length));
  if (spec.mask_token === null && texts.some((row) => row.length !== width)) {
    throw new FixtureError(`text spec of ${spec.input}: ragged rows of tokens and no mask token to pad them with`);
  }
  const data = texts.flatMap((row) => [...row, ...Array(width - row.length).fill(spec.mask_token)]);
  return { type: 'string', dims: [texts.length, width], data };
}

function lookupInGraph(dir) {
  const declared = onnxMetadata(join(dir, 'model.onnx'))['embed_runtime.text'];
  return declared !== undefined && Object.values(JSON.parse(declared)).some((spec) => spec.in_graph === true);
}

function sameIds(a, b) {
  return sameDims(a.dims, b.dims) && a.data.length === b.data.length && a.data.every((v, i) => v === b.data[i]);
}

async function runText(dir, golden) {
  // null without texts.json; else the golden with the ids tokenized here, after checking them.
  const textsPath = join(dir, 'texts.json');
  if (!existsSync(textsPath)) return null;
  const texts = JSON.parse(readFileSync(textsPath, 'utf8'));
  const declared = onnxMetadata(join(dir, 'model.onnx'))['embed_runtime.text'];
  if (!declared) throw new FixtureError(`${dir}: texts.json but model.onnx declares no embed_runtime.text`);
  const inputs = new Map(golden.inputs);
  let inGraph = false;
  for (const [name, spec] of Object.entries(JSON.parse(declared))) {
    const ids = tokenize(spec, texts);
    const want = golden.inputs.get(name);
    if (!want || !sameIds(ids, want)) {
      const bad = want ? ids.data.findIndex((v, i) => v !== want.data[i]) : -1;
      throw new FixtureError(`${dir}: ids of ${name} tokenized in JS [${ids.dims}] differ from golden.npz's [${want?.dims}] (first at flat index ${bad})`);
    }
    inputs.set(name, spec.in_graph ? graphStrings(spec, texts) : ids);
    inGraph ||= spec.in_graph === true;
  }
  return { texts: texts.length, inGraph, golden: { ...golden, inputs } };
}

// ---------------------------------------------------------------- running one fixture

async function runFixture(dir, golden = loadGolden(join(dir, 'golden.npz'))) {
  const modelPath = join(dir, 'model.onnx');
  const goldenPath = join(dir, 'golden.npz');
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ['cpu'], logSeverityLevel: 3 });
  try {
    const feeds = {};
    const missing = session.inputNames.filter((n) => !golden.inputs.has(n));
    const extra = [...golden.inputs.keys()].filter((n) => !session.inputNames.includes(n));
    if (missing.length || extra.length) {
      throw new FixtureError(`${goldenPath}: inputs do not match the model (model needs [${session.inputNames}], golden has [${[...golden.inputs.keys()]}])`);
    }
    for (const [name, arr] of golden.inputs) {
      if (arr.type !== 'int64' && arr.type !== 'string') {
        throw new FixtureError(`${goldenPath}: input.${name} is ${arr.type}, the contract says int64 (or strings for an in-graph lookup)`);
      }
      feeds[name] = new ort.Tensor(arr.type, arr.data, arr.dims);
    }
    const out = await session.run(feeds);
    const results = {};
    for (const [name, t] of Object.entries(out)) {
      results[name] = { type: t.type, dims: Array.from(t.dims, Number), data: t.data };
    }
    const inputs = [...golden.inputs].map(([n, a]) => `${n}[${a.dims}]`).join(',');
    return { golden, results, inputs };
  } finally {
    await session.release?.();
  }
}

// ---------------------------------------------------------------- self-test perturbations

function perturbations(golden, results) {
  // Each: [label, mutated golden, whether compareAll must accept it]. Float nudges are signed relative to
  // what onnxruntime-node gave, so the large one always moves away from it and the small one never
  // pushes an existing (passing) difference over the tolerance.
  const cases = [];
  for (const [name, arr] of golden.outputs) {
    if (arr.data.length === 0) continue;
    const i = Math.floor(arr.data.length / 2);
    const withData = (data) => {
      const outputs = new Map(golden.outputs);
      outputs.set(name, { ...arr, data });
      return { ...golden, outputs };
    };
    if (FLOAT_TYPES.has(arr.type)) {
      const got = Number(results[name]?.data?.[i] ?? arr.data[i]);
      const away = arr.data[i] >= got ? 1 : -1;
      const big = arr.data.slice();
      big[i] += away * Math.max(1e-3, Math.abs(big[i]) * 1e-3);
      cases.push([`${name}[${i}] moved by 1e-3`, withData(big), false]);
      const small = arr.data.slice();
      small[i] -= away * SMALL_NUDGE;
      cases.push([`${name}[${i}] moved by ${SMALL_NUDGE.toExponential()}`, withData(small), true]);
    } else if (arr.type === 'bool') {
      const flip = arr.data.slice();
      flip[i] = flip[i] ? 0 : 1;
      cases.push([`${name}[${i}] flipped`, withData(flip), false]);
    } else {
      const bump = arr.data.slice();
      bump[i] += typeof bump[i] === 'bigint' ? 1n : 1;
      cases.push([`${name}[${i}] += 1`, withData(bump), false]);
    }
  }
  const noOut = new Map(golden.outputs);
  noOut.delete(noOut.keys().next().value);
  cases.push(['one golden output dropped', { ...golden, outputs: noOut }, false]);
  return cases;
}

// ---------------------------------------------------------------- main

function findFixtures(modelsDir) {
  if (!existsSync(modelsDir) || !statSync(modelsDir).isDirectory()) {
    throw new FixtureError(`models directory ${modelsDir} does not exist`);
  }
  const fixtures = [];
  const errors = [];
  for (const name of readdirSync(modelsDir).sort()) {
    const dir = join(modelsDir, name);
    if (!statSync(dir).isDirectory()) continue;
    const hasModel = existsSync(join(dir, 'model.onnx'));
    const hasGolden = existsSync(join(dir, 'golden.npz'));
    if (hasModel && hasGolden) fixtures.push({ name, dir });
    else if (hasModel) errors.push(`${name}: model.onnx has no golden.npz beside it`);
    else if (hasGolden) errors.push(`${name}: golden.npz has no model.onnx beside it`);
  }
  return { fixtures, errors };
}

async function main(argv) {
  const args = argv.slice(2);
  const selfTest = args.includes('--self-test');
  const rest = args.filter((a) => a !== '--self-test');
  if (rest.some((a) => a.startsWith('-')) || rest.length > 1) {
    console.error('usage: node check.mjs [--self-test] [MODELS_DIR]');
    return 2;
  }
  const modelsDir = resolve(rest[0] ?? DEFAULT_MODELS);
  console.log(`onnxruntime-node ${ort.env.versions?.node ?? '?'} (CPU), models in ${modelsDir}, float atol ${FLOAT_ATOL.toExponential()}, masks exact`);

  let found;
  try {
    found = findFixtures(modelsDir);
  } catch (err) {
    console.error(`FAIL ${err.message}`);
    return 1;
  }
  let failures = 0;
  for (const e of found.errors) { console.log(`FAIL ${e}`); failures++; }
  if (found.fixtures.length === 0) {
    console.log(`FAIL no fixtures (models/<name>/model.onnx with golden.npz) under ${modelsDir}`);
    return 1;
  }

  const ran = [];
  for (const { name, dir } of found.fixtures) {
    try {
      const golden = loadGolden(join(dir, 'golden.npz'));
      if (!lookupInGraph(dir)) { // a graph doing its own lookup takes strings, not the golden ids
        const r = await runFixture(dir, golden);
        const cmp = compareAll(r.golden, r.results);
        const outs = [...r.golden.outputs.keys()].join(',');
        const line = `${cmp.ok ? 'PASS' : 'FAIL'} ${name}: ${cmp.summary} (inputs ${r.inputs}; outputs ${outs})`;
        console.log(line);
        for (const p of cmp.problems) console.log(`     ${p}`);
        if (!cmp.ok) failures++;
        ran.push({ name, ...r });
      }
      const text = await runText(dir, golden);
      if (text) {
        const t = await runFixture(dir, text.golden);
        const tc = compareAll(t.golden, t.results);
        const fed = text.inGraph ? '; strings fed to the graph\'s own lookup' : '';
        console.log(`${tc.ok ? 'PASS' : 'FAIL'} ${name} from strings: ids tokenized in JS equal golden.npz's for ${text.texts} texts${fed}; ${tc.summary}`);
        for (const p of tc.problems) console.log(`     ${p}`);
        if (!tc.ok) failures++;
        if (text.inGraph) ran.push({ name, ...t });
      }
    } catch (err) {
      console.log(`FAIL ${name}: ${err instanceof FixtureError ? err.message : err.stack ?? err}`);
      failures++;
    }
  }

  if (selfTest) {
    let selfFailures = 0;
    let cases = 0;
    for (const { name, golden, results } of ran) {
      for (const [label, mutated, mustPass] of perturbations(golden, results)) {
        cases++;
        const cmp = compareAll(mutated, results);
        if (cmp.ok !== mustPass) {
          selfFailures++;
          console.log(`FAIL self-test ${name}: ${label} was ${cmp.ok ? 'accepted' : 'rejected'}, expected ${mustPass ? 'accepted' : 'rejected'}`);
        }
      }
    }
    if (ran.length === 0) { console.log('FAIL self-test: no fixture ran, nothing to perturb'); selfFailures++; }
    console.log(`${selfFailures ? 'FAIL' : 'PASS'} self-test: ${cases - selfFailures}/${cases} perturbations judged correctly (floats off by >=1e-3 and flipped masks rejected, floats off by ${SMALL_NUDGE.toExponential()} accepted)`);
    failures += selfFailures;
  }

  console.log(`${failures ? 'FAIL' : 'OK'}: ${found.fixtures.length} fixture(s), ${failures} failure(s)`);
  return failures ? 1 : 0;
}

main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { console.error(err); process.exitCode = 1; },
);
