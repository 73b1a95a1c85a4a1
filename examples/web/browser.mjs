#!/usr/bin/env node
// Drive the page (index.html + app.js) in a headless Chromium with puppeteer-core: no browser download,
// the one given (Debian's /usr/bin/chromium by default).
//
//   node browser.mjs --url URL [--chromium PATH] [--screenshot PNG] < jobs.json
//
// URL is the page as a static server gives it (python serve.py). jobs.json, on stdin, is a list of
// {"model": "<path from the repository root>", "feeds": {"<input>": {"dims": [...], "data": [...]}}};
// stdout gets one JSON object: {"userAgent", "ort", "results": [{"model", "ms", "outputs": {name:
// {type, dims, data}}}]}. --screenshot: afterwards, run the page's own form with its default ids on the
// last artifact of its list and save the page as a PNG. Exits 1 with the page's errors on stderr when
// the page fails to start or a job throws.

import { readFileSync } from 'node:fs';

import puppeteer from 'puppeteer-core';

const TIMEOUT_MS = 30_000;

function parseArgs(argv) {
  const opts = { chromium: '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = { '--url': 'url', '--chromium': 'chromium', '--screenshot': 'screenshot' }[argv[i]];
    if (!key || argv[i + 1] === undefined) throw new Error(`usage: node browser.mjs --url URL [--chromium PATH] [--screenshot PNG] < jobs.json (bad argument ${argv[i]})`);
    opts[key] = argv[i + 1];
  }
  if (!opts.url) throw new Error('--url is required: the page as served by python examples/web/serve.py');
  return opts;
}

async function screenshot(page, path) {
  await page.evaluate(() => {
    const select = document.getElementById('model');
    select.selectedIndex = select.options.length - 1;
    document.getElementById('result').dataset.state = '';
  });
  await page.click('#run');
  await page.waitForSelector('#result[data-state="done"]', { timeout: TIMEOUT_MS });
  const error = await page.$eval('#error', (el) => el.textContent);
  if (error) throw new Error(`the page's own run failed: ${error}`);
  await page.screenshot({ path, fullPage: true });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const jobs = JSON.parse(readFileSync(0, 'utf8'));
  const pageErrors = [];
  const browser = await puppeteer.launch({
    executablePath: opts.chromium,
    headless: true,
    // --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start; the page is our own.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    timeout: TIMEOUT_MS,
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1000, height: 800 });
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => pageErrors.push(`page: ${e.message}`));
    page.on('requestfailed', (r) => pageErrors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
    page.on('response', (r) => { if (r.status() >= 400) pageErrors.push(`HTTP ${r.status()}: ${r.url()}`); });
    await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT_MS });
    await page.waitForFunction(() => window.embedReady !== undefined, { timeout: TIMEOUT_MS });
    const ready = await page.evaluate(() => (window.embedReady === true ? true : String(window.embedReady)));
    if (ready !== true) throw new Error(`the page did not start: ${ready}`);
    const results = [];
    for (const job of jobs) {
      const r = await page.evaluate((m, f) => window.embedRun(m, f), job.model, job.feeds);
      results.push({ model: job.model, ...r });
    }
    if (opts.screenshot) await screenshot(page, opts.screenshot);
    const ort = await page.$eval('#versions', (el) => el.textContent);
    process.stdout.write(JSON.stringify({ userAgent: await browser.userAgent(), ort, results }));
  } catch (err) {
    for (const e of pageErrors) console.error(e);
    throw err;
  } finally {
    await browser.close();
  }
}

main().catch((err) => {
  console.error(`browser.mjs: ${err.message ?? err}`);
  process.exitCode = 1;
});
