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
async function openChat(browser, { name, room, viewport, mobile, token } = {}) {
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
  await page.goto(BASE_URL + (token ? '?token=' + encodeURIComponent(token) : '') + (room ? '#' + room : ''));
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

// The online list of a page: names and ids in page order, the count in the
// header, and the "and N others" line ('' when hidden).
async function onlineList(page) {
  return page.evaluate(() => {
    const more = document.getElementById('users-more');
    return {
      names: Array.from(document.querySelectorAll('#users li .name')).map((n) => n.textContent),
      ids: Array.from(document.querySelectorAll('#users li')).map((li) => li.getAttribute('data-id')),
      count: document.getElementById('count').textContent,
      others: more.hidden ? '' : document.getElementById('others').textContent,
    };
  });
}

// Waits until the online list shows exactly `names` (in this order) and the
// header `count`; says what it shows when it does not.
async function waitOnlineList(page, names, count, timeout = STEP_MS) {
  try {
    await page.waitForFunction(([want, n]) => {
      const got = Array.from(document.querySelectorAll('#users li .name')).map((x) => x.textContent);
      return document.getElementById('count').textContent === n && got.length === want.length &&
        got.every((g, i) => g === want[i]);
    }, [names, String(count)], { timeout });
  } catch (e) {
    throw new Error(`online list: want ${JSON.stringify(names)} (${count}), shows ${JSON.stringify(await onlineList(page))}`);
  }
}

// Extra members of rooms without a page each: plain WebSockets (the chat's
// JSON protocol) opened from one browser page on the chat's own origin, each
// one user, on whichever node nginx picks.
async function openBots(browser) {
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_MS);
  const page = await context.newPage();
  await page.goto(BASE_URL + 'healthz');
  await page.evaluate(() => { window.bots = new Map(); window.botDiffs = []; });
  return {
    context,
    // Connects a user named `name` into `room`; resolves with its {id, name, node}.
    join(room, name) {
      return page.evaluate(([room, name, wait]) => new Promise((resolve, reject) => {
        const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws?name=${encodeURIComponent(name)}`);
        let me = null;
        const fail = (why) => { clearTimeout(timer); reject(new Error(`bot ${name}: ${why}`)); };
        const timer = setTimeout(() => fail('no joined'), wait);
        ws.onmessage = (ev) => {
          const f = JSON.parse(ev.data);
          if (f.type === 'welcome') {
            me = { id: f.user.id, name: f.user.name, node: f.node };
            ws.send(JSON.stringify({ type: 'join', room }));
          } else if (f.type === 'presence' && f.event === 'diff') {
            window.botDiffs.push(f);
          } else if (f.type === 'joined' && f.room === room && me) {
            clearTimeout(timer);
            window.bots.set(name, ws);
            resolve(me);
          } else if (f.type === 'error') {
            fail(`${f.code}: ${f.message}`);
          }
        };
        ws.onclose = (ev) => fail(`closed ${ev.code}`);
      }), [room, name, STEP_MS]);
    },
    // Waits until a bot got a diff of `room` with this count: the changes
    // before it are announced, none is still held back by the diff interval.
    async settled(room, count) {
      await page.waitForFunction(([room, n]) => window.botDiffs.some((f) => f.room === room && f.count === n), [room, count]);
    },
    // Closes that user's socket: it leaves every room.
    leave(name) {
      return page.evaluate((name) => {
        const ws = window.bots.get(name);
        window.bots.delete(name);
        if (ws) { ws.onclose = null; ws.close(1000); }
      }, name);
    },
    close() { return context.close().catch(() => {}); },
  };
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

// An HS256 token for `sub`, signed with the cluster's secret (e2e/run.sh).
function token(sub, name) {
  const crypto = require('node:crypto');
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, name, exp: Math.floor(Date.now() / 1000) + 3600 });
  const secret = process.env.E2E_JWT_SECRET || 'e2e-secret';
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
}

module.exports = {
  BASE_URL, STEP_MS, launch, openChat, openChatElsewhere, waitOnline, nodeOf, say, waitForText,
  shownMessages, onlineList, waitOnlineList, openBots, duplicates, nodePid, artifact, assertClean, unique,
  token,
};
