'use strict';
// The chat page in headless Chromium, through nginx, against the process
// cluster that e2e/run.sh starts (three nodes on one Redis). Every page is a
// separate browser context: its own localStorage and its own socket.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const {
  launch, openChat, openChatElsewhere, waitOnline, nodeOf, say, waitForText, shownMessages,
  duplicates, nodePid, artifact, assertClean, unique,
} = require('./helpers');

let browser;
const open = [];
async function chat(opts) {
  const c = await openChat(browser, opts);
  open.push(c);
  return c;
}
async function chatElsewhere(notOn, opts) {
  const c = await openChatElsewhere(browser, notOn, opts);
  open.push(c);
  return c;
}
async function closeAll() {
  while (open.length) await open.pop().context.close().catch(() => {});
}
// Names in the online list of a page.
function onlineNames(page) {
  return page.$$eval('#users li .name', (ns) => ns.map((n) => n.textContent));
}

describe('the chat page on the cluster', { timeout: 120_000 }, () => {
  before(async () => { browser = await launch(); });
  after(async () => { await closeAll(); if (browser) await browser.close(); });

  it('two pages on different nodes chat both ways', async () => {
    const room = unique('e2e-chat');
    const a = await chat({ name: 'Ann', room });
    const nodeA = await nodeOf(a.page);
    const b = await chatElsewhere(nodeA, { name: 'Bob', room });
    const nodeB = await nodeOf(b.page);
    assert.notEqual(nodeA, nodeB, 'the two pages are on different nodes');

    // Each sees the other online, across nodes.
    await a.page.waitForFunction(() => document.getElementById('count').textContent === '2');
    await b.page.waitForFunction(() => document.getElementById('count').textContent === '2');
    assert.deepEqual(await onlineNames(a.page), ['Ann', 'Bob']);
    assert.deepEqual(await onlineNames(b.page), ['Ann', 'Bob']);

    // Typing shows on the other page.
    await a.page.fill('#input', 'Hello');
    await b.page.waitForFunction(() => document.getElementById('typing').textContent === 'Ann is typing…');

    await say(a.page, `Hello from ${nodeA}`);
    await waitForText(b.page, `Hello from ${nodeA}`);
    await say(b.page, `Hello back from ${nodeB}`);
    await waitForText(a.page, `Hello back from ${nodeB}`);
    await say(a.page, 'Third');
    await waitForText(b.page, 'Third');
    await waitForText(a.page, 'Third');

    // Both pages show the same messages, with the same ids, in the same order.
    const onA = await shownMessages(a.page);
    const onB = await shownMessages(b.page);
    assert.deepEqual(onA.map((m) => [m.from, m.text]), [
      ['Ann', `Hello from ${nodeA}`], ['Bob', `Hello back from ${nodeB}`], ['Ann', 'Third'],
    ]);
    assert.deepEqual(onB.map((m) => m.id), onA.map((m) => m.id));
    for (const m of onA) {
      assert.match(m.id, /^\d+-\d+$/, 'server ids are stream positions');
      assert.ok(m.hasTime, 'each message shows its time');
    }
    assert.equal(await a.page.textContent('#typing'), '');
    assertClean(a.rec, 'page A');
    assertClean(b.rec, 'page B');
    await closeAll();
  });

  it('markup in messages and names is shown as text and runs nothing', async () => {
    const room = unique('e2e-xss');
    const NAME = '<img src=x onerror=alert(2)>';
    const PAYLOADS = [
      '<img src=x onerror=alert(1)>',
      '<script>window.__pwned=1</script>',
      '"><svg onload=alert(3)></svg>&lt;b&gt;<a href="javascript:alert(4)">x</a>',
    ];
    // A guest chooses the name in the page; it is kept in localStorage.
    const e = await chat({ room });
    assert.match(await e.page.textContent('#me'), /^guest-/);
    await e.page.fill('#name-input', NAME);
    await e.page.press('#name-input', 'Enter');
    await e.page.waitForFunction((n) => document.getElementById('me').textContent === n, NAME);
    await waitOnline(e.page);
    await e.page.reload();
    await waitOnline(e.page);
    assert.equal(await e.page.textContent('#me'), NAME, 'the name survives a reload');
    assert.equal(await e.page.inputValue('#name-input'), NAME);
    assert.equal(await e.page.evaluate(() => localStorage.getItem('banter.name')), NAME);

    const f = await chatElsewhere(await nodeOf(e.page), { name: 'Fay', room });
    await f.page.waitForFunction((n) => Array.from(document.querySelectorAll('#users .name')).some((x) => x.textContent === n), NAME);
    await e.page.fill('#input', '<');
    await f.page.waitForFunction((n) => document.getElementById('typing').textContent === `${n} is typing…`, NAME);
    for (const p of PAYLOADS) await say(e.page, p);
    for (const page of [e.page, f.page]) {
      for (const p of PAYLOADS) await waitForText(page, p);
    }
    // Give an injected element the time to load, fail and run a handler.
    await f.page.waitForTimeout(500);

    for (const [who, c] of [['sender', e], ['receiver', f]]) {
      const shown = await shownMessages(c.page);
      assert.deepEqual(shown.map((m) => m.text), PAYLOADS, `${who}: each payload is one message, as text`);
      assert.ok(shown.every((m) => m.from === NAME), `${who}: the name is shown as text`);
      const dom = await c.page.evaluate(() => ({
        injected: document.querySelectorAll('#messages img, #messages script, #messages svg, #messages a, #users img, #typing img, aside img').length,
        images: document.images.length,
        pwned: typeof window.__pwned,
      }));
      assert.deepEqual(dom, { injected: 0, images: 0, pwned: 'undefined' }, `${who}: nothing injected`);
      assert.ok((await onlineNames(c.page)).includes(NAME), `${who}: the online list shows the name as text`);
      assertClean(c.rec, who);
    }
    await closeAll();
  });

  it('works from the keyboard: send, new line, rooms, direct messages', async () => {
    const room = unique('e2e-keys');
    const room2 = unique('e2e-keys2');
    const g = await chat({ name: 'Gus', room });
    const h = await chatElsewhere(await nodeOf(g.page), { name: 'Hal', room });
    await g.page.waitForFunction(() => document.getElementById('count').textContent === '2');
    const kb = g.page.keyboard;

    // Focus starts in the message box; Enter sends, Shift+Enter is a new line.
    assert.equal(await g.page.evaluate(() => document.activeElement.id), 'input');
    await kb.type('line one');
    await kb.press('Shift+Enter');
    await kb.type('line two');
    await kb.press('Enter');
    await waitForText(h.page, 'line one\nline two');

    // Every control is reachable with Tab.
    const reached = new Set();
    await g.page.evaluate(() => document.activeElement.blur());
    for (let i = 0; i < 25; i++) {
      await kb.press('Tab');
      reached.add(await g.page.evaluate(() => {
        const a = document.activeElement;
        const li = a && a.closest('li');
        return a.id || (li ? `${li.parentElement.id}:${a.className}` : a.tagName);
      }));
    }
    for (const want of ['rooms:item room', 'rooms:x', 'room-input', 'users:item', 'name-input', 'input', 'send']) {
      assert.ok(reached.has(want), `Tab reaches ${want} (reached: ${[...reached].join(', ')})`);
    }

    // Join a second room by typing its name and Enter.
    await g.page.focus('#room-input');
    await kb.type(room2);
    await kb.press('Enter');
    await g.page.waitForSelector(`#rooms li.current[data-room="${room2}"]`);
    // Alt+Up / Alt+Down switch rooms, and leave the focus in the message box.
    await kb.press('Alt+ArrowUp');
    await g.page.waitForSelector(`#rooms li.current[data-room="${room}"]`);
    assert.equal(await g.page.evaluate(() => document.activeElement.id), 'input');
    await kb.press('Alt+ArrowDown');
    await g.page.waitForSelector(`#rooms li.current[data-room="${room2}"]`);
    // Enter on a room in the list switches to it.
    await g.page.focus(`#rooms li[data-room="${room}"] button.room`);
    await kb.press('Enter');
    await g.page.waitForSelector(`#rooms li.current[data-room="${room}"]`);

    // Enter on a name in the online list starts a direct message.
    await g.page.focus('#users li:not(.self) button');
    await kb.press('Enter');
    await g.page.waitForSelector('#dm-target:not([hidden])');
    assert.equal(await g.page.textContent('#dm-name'), 'Hal');
    assert.equal(await g.page.evaluate(() => document.activeElement.id), 'input');
    await kb.type('psst, Hal');
    await kb.press('Enter');
    await h.page.waitForFunction(() => Array.from(document.querySelectorAll('#messages li.msg.dm .text')).some((n) => n.textContent === 'psst, Hal'));
    await g.page.waitForFunction(() => Array.from(document.querySelectorAll('#messages li.msg.dm .text')).some((n) => n.textContent === 'psst, Hal'));
    // Escape goes back to the room.
    await kb.press('Escape');
    await g.page.waitForSelector('#dm-target', { state: 'hidden' });
    assertClean(g.rec, 'Gus');
    assertClean(h.rec, 'Hal');
    await closeAll();
  });

  it('saves screenshots, and is readable on a phone', async () => {
    const ann = await chat({ name: 'Ann', room: 'lobby', viewport: { width: 1000, height: 580 } });
    const nodeA = await nodeOf(ann.page);
    const bob = await chatElsewhere(nodeA, {
      name: 'Bob', room: 'lobby', viewport: { width: 390, height: 760 }, mobile: true,
    });
    const nodeB = await nodeOf(bob.page);
    const lines = [
      [ann, 'Hi Bob! Which node are you on?'],
      [bob, `Hi Ann, I'm on ${nodeB}.`],
      [ann, `And I'm on ${nodeA}: same room, different nodes.`],
      [ann, 'Try a <b>tag</b>: it stays text.'],
      [bob, 'Nice. Messages are in the same order for everyone, and a reconnect picks up where it left off.'],
    ];
    for (const [c, t] of lines) {
      await say(c.page, t);
      await waitForText(ann.page, t);
      await waitForText(bob.page, t);
    }
    // Ann also joins #random; Bob says something there, which Ann sees as unread.
    await ann.page.fill('#room-input', 'random');
    await ann.page.press('#room-input', 'Enter');
    await ann.page.waitForSelector('#rooms li.current[data-room="random"]');
    await ann.page.click('#rooms li[data-room="lobby"] button.room');
    await ann.page.waitForSelector('#rooms li.current[data-room="lobby"]');

    // On the phone the side panel is behind the menu button.
    const layout = await bob.page.evaluate(() => ({
      overflowX: document.documentElement.scrollWidth > document.documentElement.clientWidth,
      menu: getComputedStyle(document.getElementById('menu')).display !== 'none',
      side: getComputedStyle(document.getElementById('side')).display,
      inputFont: parseFloat(getComputedStyle(document.getElementById('input')).fontSize),
    }));
    assert.deepEqual(layout, { overflowX: false, menu: true, side: 'none', inputFont: 16 });
    await bob.page.tap('#menu');
    await bob.page.waitForSelector('#side', { state: 'visible' });
    await bob.page.fill('#room-input', 'random');
    await bob.page.press('#room-input', 'Enter');
    await bob.page.waitForSelector('#rooms li.current[data-room="random"]', { state: 'attached' });
    await bob.page.waitForSelector('#side', { state: 'hidden' });
    await say(bob.page, 'Anyone here?');
    await ann.page.waitForSelector('#rooms li[data-room="random"] .unread');
    assert.equal(await ann.page.textContent('#rooms li[data-room="random"] .unread'), '1');
    await bob.page.tap('#menu');
    await bob.page.tap('#rooms li[data-room="lobby"] button.room');
    await bob.page.waitForSelector('#rooms li.current[data-room="lobby"]', { state: 'attached' });
    await bob.page.fill('#input', 'Sounds good');
    await ann.page.waitForFunction(() => document.getElementById('typing').textContent === 'Bob is typing…');

    const shots = ['chat.png', 'chat-phone.png', 'chat-phone-menu.png'].map(artifact);
    await ann.page.screenshot({ path: shots[0] });
    await bob.page.screenshot({ path: shots[1] });
    await bob.page.tap('#menu');
    await bob.page.waitForSelector('#side', { state: 'visible' });
    await bob.page.screenshot({ path: shots[2] });
    for (const s of shots) assert.ok(fs.statSync(s).size > 10_000, `${s} is a real screenshot`);
    assertClean(ann.rec, 'Ann');
    assertClean(bob.rec, 'Bob');
    await closeAll();
  });

  it('a page whose node is killed reconnects on another node and shows what was sent meanwhile, each once', async () => {
    const room = unique('e2e-crash');
    const c = await chat({ name: 'Cat', room });
    const nodeC = await nodeOf(c.page);
    const d = await chatElsewhere(nodeC, { name: 'Dan', room });
    await say(d.page, 'before the crash');
    await waitForText(c.page, 'before the crash');
    const beforeId = (await shownMessages(c.page)).find((m) => m.text === 'before the crash').id;

    // The browser of page C is held offline from just before the crash until
    // page D has sent its messages, so that they are certainly sent while C
    // has no socket (otherwise C may be back before D sends). The crash is real:
    // SIGKILL to C's node, which closes C's socket through nginx.
    await c.context.setOffline(true);
    const sentBefore = c.rec.sent.length;
    const receivedBefore = c.rec.received.length;
    process.kill(nodePid(nodeC), 'SIGKILL');
    await c.page.waitForFunction(() => {
      const s = document.getElementById('status');
      return /reconnecting/.test(s.textContent) && s.classList.contains('offline');
    });

    const meanwhile = ['sent meanwhile 1', 'sent meanwhile 2', 'sent meanwhile 3'];
    for (const t of meanwhile) {
      await say(d.page, t);
      await waitForText(d.page, t);
    }
    assert.match(await c.page.textContent('#status'), /reconnecting/, 'C is still away');
    assert.equal((await shownMessages(c.page)).length, 1);

    await c.context.setOffline(false);
    await waitOnline(c.page, 20_000);
    const nodeC2 = await nodeOf(c.page);
    assert.notEqual(nodeC2, nodeC, 'C is on another node now');
    for (const t of meanwhile) await waitForText(c.page, t);

    // The page rejoined with `since` = the last id it had, and got the rest.
    const join = c.rec.sent.slice(sentBefore).find((f) => f.type === 'join' && f.room === room);
    assert.ok(join, 'a join after the reconnect');
    assert.equal(join.since, beforeId);
    const joined = c.rec.received.slice(receivedBefore).find((f) => f.type === 'joined' && f.room === room);
    assert.equal(joined.recovered, true);
    assert.deepEqual(joined.history.map((m) => m.text), meanwhile);

    // Nothing twice, nothing missing, in order, and the same ids as D shows.
    await c.page.waitForTimeout(500);
    const onC = await shownMessages(c.page);
    const onD = await shownMessages(d.page);
    assert.deepEqual(duplicates(onC.map((m) => m.id)), [], 'no message id shown twice');
    const count = await c.page.$$eval('#messages li.msg[data-id]', (l) => l.length);
    assert.equal(count, 4);
    for (const t of ['before the crash', ...meanwhile]) {
      assert.equal(onC.filter((m) => m.text === t).length, 1, `"${t}" shown once`);
    }
    assert.deepEqual(onC.map((m) => [m.id, m.text]), onD.map((m) => [m.id, m.text]));

    // C still chats from its new node.
    await say(c.page, `back on ${nodeC2}`);
    await waitForText(d.page, `back on ${nodeC2}`);
    assertClean(c.rec, 'Cat');
    assertClean(d.rec, 'Dan');
    await closeAll();
  });
});
