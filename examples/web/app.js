// The committed ONNX artifacts in onnxruntime-web (wasm backend), no build step: index.html loads this
// module from a static server at the repository root (python examples/web/serve.py).
//
// For a person: pick an artifact, see its inputs and outputs, type ids, run. For the test
// (tests/web/test_browser.py through browser.mjs): window.embedRun(modelPath, feeds) runs one model on
// int64 feeds {name: {dims, data}} and returns every output as {type, dims, data} in plain JSON.

import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';

// A plain static server gives no cross-origin isolation, so no SharedArrayBuffer: one wasm thread.
ort.env.wasm.numThreads = 1;
ort.env.logLevel = 'error';

const ROOT = new URL('../../', import.meta.url); // model paths in manifest.json are relative to the repo root
const sessions = new Map();

function session(modelPath) {
  if (!sessions.has(modelPath)) {
    const url = new URL(modelPath, ROOT).href;
    sessions.set(modelPath, ort.InferenceSession.create(url, { executionProviders: ['wasm'] }));
  }
  return sessions.get(modelPath);
}

function toTensor(name, { dims, data }) {
  if (!Array.isArray(dims) || !Array.isArray(data)) throw new Error(`feed ${name}: expected {dims: [...], data: [...]}`);
  return new ort.Tensor('int64', BigInt64Array.from(data, (v) => BigInt(v)), dims);
}

function plain(tensor) {
  const data = Array.from(tensor.data, (v) => (typeof v === 'bigint' ? Number(v) : v));
  return { type: tensor.type, dims: Array.from(tensor.dims, Number), data };
}

async function run(modelPath, feeds) {
  const sess = await session(modelPath);
  const tensors = Object.fromEntries(Object.entries(feeds).map(([n, f]) => [n, toTensor(n, f)]));
  const start = performance.now();
  const out = await sess.run(tensors);
  const ms = performance.now() - start;
  return { ms, outputs: Object.fromEntries(Object.entries(out).map(([n, t]) => [n, plain(t)])) };
}

window.embedRun = run;

// ---------------------------------------------------------------- the page

const $ = (id) => document.getElementById(id);
const shape = (dims) => `[${dims.join(', ')}]`;

function cell(row, text, tag = 'td') {
  const el = document.createElement(tag);
  el.textContent = text;
  row.appendChild(el);
}

function table(el, header, rows) {
  el.replaceChildren();
  const head = el.createTHead().insertRow();
  for (const h of header) cell(head, h, 'th');
  const body = el.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of r) cell(tr, c);
  }
}

// "3 14 15; 92 65 35" or one row per line -> {dims: [rows, length], data}, checked against the input's shape.
function parseIds(text, meta) {
  const rows = text.split(/[\n;]+/).map((r) => r.trim()).filter(Boolean).map((r) => r.split(/[\s,]+/));
  if (rows.length === 0) throw new Error(`${meta.name}: type at least one row of ids`);
  const length = rows[0].length;
  const fixed = typeof meta.shape?.[1] === 'number' ? meta.shape[1] : null;
  rows.forEach((r, i) => {
    const want = fixed ?? length;
    if (r.length !== want) throw new Error(`${meta.name}: row ${i + 1} has ${r.length} ids, every row needs ${want} (shape ${shape(meta.shape)})`);
    for (const v of r) if (!/^\d+$/.test(v)) throw new Error(`${meta.name}: "${v}" in row ${i + 1} is not a non-negative integer id`);
  });
  return { dims: [rows.length, length], data: rows.flat().map(Number) };
}

const fmt = (v) => (typeof v === 'number' ? v.toFixed(4) : String(v));

function showResult(feed, result) {
  const parts = [];
  for (const [name, t] of Object.entries(result.outputs)) {
    const width = t.dims.length >= 2 ? t.dims[t.dims.length - 1] : 1;
    const positions = t.data.length / width;
    const length = t.dims.length >= 3 ? t.dims[1] : 1;
    const title = document.createElement('h3');
    title.textContent = `${name}: ${t.type} ${shape(t.dims)}`;
    const rows = [];
    for (let p = 0; p < Math.min(positions, 40); p++) {
      const v = t.data.slice(p * width, (p + 1) * width);
      const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
      const id = positions === feed.data.length ? String(feed.data[p]) : '';
      rows.push([`${Math.floor(p / length)}, ${p % length}`, id, v.slice(0, 6).map(fmt).join('  ') + (width > 6 ? '  …' : ''), norm.toFixed(4)]);
    }
    const el = document.createElement('table');
    table(el, ['row, position', 'id', `first values (of ${width})`, 'L2 norm'], rows);
    parts.push(title, el);
  }
  $('result').replaceChildren(...parts);
  $('timing').textContent = `ran in ${result.ms.toFixed(2)} ms (wasm, 1 thread)`;
}

async function describe(entry) {
  const sess = await session(entry.model);
  $('about').textContent = `${entry.model}: ${(entry.bytes / 1024).toFixed(1)} KiB, ${entry.table_dtype} table, ` +
    `max error vs Keras ${entry.keras_max_abs_diff.toExponential(2)} (bound ${entry.keras_bound.toExponential(2)})`;
  const rows = (metas, kind) => metas.map((m) => [kind, m.name, m.type ?? '', shape(m.shape ?? [])]);
  table($('io'), ['', 'name', 'type', 'shape'], [...rows(sess.inputMetadata, 'input'), ...rows(sess.outputMetadata, 'output')]);
  return sess;
}

async function onRun(manifest) {
  const entry = manifest.artifacts[$('model').selectedIndex];
  $('result').dataset.state = 'running';
  try {
    const sess = await describe(entry);
    const meta = sess.inputMetadata[0];
    const feed = parseIds($('ids').value, meta);
    $('error').textContent = '';
    showResult(feed, await run(entry.model, { [meta.name]: feed }));
  } catch (err) {
    $('error').textContent = String(err.message ?? err);
  }
  $('result').dataset.state = 'done';
}

async function main() {
  $('versions').textContent = `onnxruntime-web ${ort.env.versions?.web ?? '?'}, wasm backend`;
  const manifest = await (await fetch('models/manifest.json')).json();
  for (const a of manifest.artifacts) $('model').add(new Option(`${a.name} (${(a.bytes / 1024).toFixed(0)} KiB)`));
  $('model').addEventListener('change', () => describe(manifest.artifacts[$('model').selectedIndex]));
  $('run').addEventListener('click', () => onRun(manifest));
  await describe(manifest.artifacts[0]);
  window.embedReady = true;
}

main().catch((err) => {
  $('error').textContent = `could not start: ${err.message ?? err}`;
  window.embedReady = err;
});
