'use strict';
// Shared helpers for the browser tests: the browser, pages on the cluster,
// and what a page shows.
const fs = require('node:fs');
const path = require('node:path');
const assert = require('node:assert/strict');
const { chromium } = require('playwright-core');

const BASE_URL = process.env.BANTER_URL || 'http://127.0.0.1:8080/';
const CLUSTER_DIR = process.env.CLUSTER_DIR || path.join(__dirname, '..', '.cluster');
const ARTIFACTS = process.env.E2E_ARTIFACTS || path.join(__dirname, '..', 'test-artifacts');
const STEP_MS = 10_000;

// Debian's Chromium; Playwright never downloads a browser here. The flags keep
// it off the network (the machine's network is closed) and make it start as root.
async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

// A new browser context (its own localStorage and socket) with one page on
// the chat, named `name`, in `room`. Records JavaScript errors, dialogs and
// the page's WebSocket frames.
async function openChat(browser, { name, room, viewport, mobile } = {}) {
  const context = await browser.newContext({
    viewport: viewport || { width: 1100, height: 700 },
    ...(mobile ? { isMobile: true, hasTouch: true, deviceScaleFactor: 2 } : {}),
  });
  context.setDefaultTimeout(STEP_MS);
  context.setDefaultNavigationTimeout(STEP_MS);
  if (name != null) {
    await context.addInitScript((n) => localStorage.setItem('banter.name', n), name);
  }
  const page = await context.newPage();
  const rec = { errors: [], dialogs: [], sent: [], received: [] };
  page.on('pageerror', (e) => rec.errors.push(String(e && e.stack || e)));
  page.on('dialog', (d) => { rec.dialogs.push(`${d.type()}: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => rec.sent.push(parse(f.payload)));
    ws.on('framereceived', (f) => rec.received.push(parse(f.payload)));
  });
  await page.goto(BASE_URL + (room ? '#' + room : ''));
  await waitOnline(page);
  if (room) await page.waitForSelector(`#rooms li.current[data-room="${room}"]`, { state: 'attached' });
  return { context, page, rec };
}

function parse(payload) {
  try { return JSON.parse(String(payload)); } catch { return { unparsed: String(payload) }; }
}

async function waitOnline(page, timeout = STEP_MS) {
  await page.waitForFunction(() => {
    const s = document.getElementById('status');
    return s.textContent === 'online' && s.classList.contains('online') && document.getElementById('node').textContent !== '…';
  }, null, { timeout });
}

async function nodeOf(page) {
  return (await page.textContent('#node')).trim();
}

// Opens pages until one lands on a node other than `notOn` (nginx balances
// on open connections, so the next socket normally goes elsewhere at once).
async function openChatElsewhere(browser, notOn, opts) {
  for (let i = 0; i < 4; i++) {
    const c = await openChat(browser, opts);
    if ((await nodeOf(c.page)) !== notOn) return c;
    await c.context.close();
  }
  throw new Error(`every new page landed on ${notOn}`);
}

async function say(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
  // The input empties once the frame is on the socket.
  await page.waitForFunction(() => document.getElementById('input').value === '');
}

// Waits until a message with exactly this text is shown in #messages.
async function waitForText(page, text, timeout = STEP_MS) {
  await page.waitForFunction(
    (t) => Array.from(document.querySelectorAll('#messages li.msg .text')).some((n) => n.textContent === t),
    text, { timeout });
}

// What #messages shows: [{id, from, text}] in page order.
async function shownMessages(page) {
  return page.$$eval('#messages li.msg', (lis) => lis.map((li) => ({
    id: li.getAttribute('data-id'),
    from: li.querySelector('.from') && li.querySelector('.from').textContent,
    text: li.querySelector('.text') && li.querySelector('.text').textContent,
    hasTime: !!li.querySelector('.time'),
  })));
}

function duplicates(values) {
  const seen = new Set(), dup = [];
  for (const v of values) { if (seen.has(v)) dup.push(v); seen.add(v); }
  return dup;
}

// The pid of a node of the cluster, from scripts/cluster.sh's pid file.
function nodePid(node) {
  const [pid, comm] = fs.readFileSync(path.join(CLUSTER_DIR, 'pids', `${node}.pid`), 'utf8').trim().split(/\s+/);
  assert.equal(comm, 'banter-node', `pid file of ${node}`);
  return Number(pid);
}

function artifact(name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}

function assertClean(rec, who) {
  assert.deepEqual(rec.errors, [], `${who}: JavaScript errors in the page`);
  assert.deepEqual(rec.dialogs, [], `${who}: dialogs opened`);
}

function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
}

module.exports = {
  BASE_URL, STEP_MS, launch, openChat, openChatElsewhere, waitOnline, nodeOf, say, waitForText,
  shownMessages, duplicates, nodePid, artifact, assertClean, unique,
};
