'use strict';
// The chat page in headless Chromium, through nginx, against the process
// cluster that e2e/run.sh starts (three nodes on one Redis). Every page is a
// separate browser context: its own localStorage and its own socket.
const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const {
  launch, openChat, openChatElsewhere, waitOnline, nodeOf, say, waitForText, shownMessages,
  onlineList, waitOnlineList, openBots, duplicates, nodePid, artifact, assertClean, unique, token,
} = require('./helpers');

// The cluster's presence settings (e2e/run.sh): the first page of who is
// online holds LIST_LIMIT users, and rooms over EVENTS_MAX members get diffs
// with the count only.
const LIST_LIMIT = Number(process.env.E2E_LIST_LIMIT) || 0;
const EVENTS_MAX = Number(process.env.E2E_EVENTS_MAX_MEMBERS) || 0;

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
// Names in the online list of a page (you first, then by name).
function onlineNames(page) {
  return page.$$eval('#users li .name', (ns) => ns.map((n) => n.textContent));
}
// The presence frames a page received for a room.
function presenceFrames(rec, room) {
  return rec.received.filter((f) => f.type === 'presence' && f.room === room);
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
    assert.deepEqual(await onlineNames(b.page), ['Bob', 'Ann'], 'you are listed first');
    assert.equal((await onlineList(b.page)).others, '', 'everyone is listed: no "others"');

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
      assert.ok(typeof m.id === 'string' && m.id.length > 0, 'server ids are (opaque) strings');
      assert.ok(m.hasTime, 'each message shows its time');
    }
    assert.deepEqual(duplicates(onA.map((m) => m.id)), []);
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
    await h.page.waitForSelector('#dialogs li .unread');
    await h.page.click('#dialogs li button');
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

  it('the online list follows joins and leaves on other nodes, one entry at a time', async () => {
    const room = unique('e2e-presence');
    const mia = await chat({ name: 'Mia', room });
    const nodeM = await nodeOf(mia.page);
    await waitOnlineList(mia.page, ['Mia'], 1);
    const zed = await chatElsewhere(nodeM, { name: 'Zed', room });
    await waitOnlineList(mia.page, ['Mia', 'Zed'], 2);
    const abe = await chatElsewhere(nodeM, { name: 'Abe', room });
    // Inserted in order (you first, then by name), on every page.
    await waitOnlineList(mia.page, ['Mia', 'Abe', 'Zed'], 3);
    await waitOnlineList(abe.page, ['Abe', 'Mia', 'Zed'], 3);

    // Mark the entries shown now: a change must insert or remove entries, not
    // rebuild the list.
    await mia.page.$$eval('#users li', (lis) => lis.forEach((li) => { li.__kept = true; }));
    const kim = await chat({ name: 'Kim', room });
    await waitOnlineList(mia.page, ['Mia', 'Abe', 'Kim', 'Zed'], 4);
    await zed.context.close();
    await waitOnlineList(mia.page, ['Mia', 'Abe', 'Kim'], 3);
    // Kim came when four were online: the first page (LIST_LIMIT, 3 here) may
    // have left someone out, whom the count still counts.
    await kim.page.waitForFunction(() => document.getElementById('count').textContent === '3');
    const onKim = await onlineList(kim.page);
    assert.equal(onKim.names[0], 'Kim');
    assert.ok(onKim.names.every((n) => ['Kim', 'Abe', 'Mia'].includes(n)), JSON.stringify(onKim));
    const unlisted = 3 - onKim.names.length;
    assert.equal(onKim.others, unlisted ? `and ${unlisted} other${unlisted === 1 ? '' : 's'}` : '');
    assert.deepEqual(await mia.page.$$eval('#users li', (lis) => lis.map((li) => !!li.__kept)), [true, true, false],
      'Mia and Abe keep their elements; Kim was inserted');
    assert.equal((await onlineList(mia.page)).others, '');

    // The page learnt all this from diffs (never the old one-user events),
    // each with the exact count.
    const frames = presenceFrames(mia.rec, room);
    assert.ok(frames.some((f) => f.event === 'diff' && f.left.some((u) => u.name === 'Zed')), 'a diff with Zed leaving');
    assert.deepEqual(frames.filter((f) => f.event !== 'diff'), [], 'only diffs');
    assert.equal(frames[frames.length - 1].count, 3);
    for (const [who, c] of [['Mia', mia], ['Abe', abe], ['Kim', kim]]) assertClean(c.rec, who);
    await closeAll();
  });

  it('a room bigger than the first page: the exact count, "and N others", the rest on demand, count-only diffs past the threshold', async () => {
    assert.ok(LIST_LIMIT > 0 && EVENTS_MAX > LIST_LIMIT,
      'e2e/run.sh sets small presence.list_limit and events_max_members (the node does not know them?)');
    const room = unique('e2e-many');
    const bots = await openBots(browser);
    open.push(bots);
    // EVENTS_MAX members in all: diffs still name who joins and leaves.
    const botNames = Array.from({ length: EVENTS_MAX - 1 }, (_, i) => `Bot-${String(i + 1).padStart(2, '0')}`);
    for (const n of botNames) await bots.join(room, n);
    // Their joins announced, so that no diff naming them comes after Pat's
    // first page (it would list them: fine, but not a first page).
    await bots.settled(room, botNames.length);
    const pat = await chat({ name: 'Pat', room });
    const total = EVENTS_MAX;
    await pat.page.waitForFunction((n) => document.getElementById('count').textContent === n, String(total));
    const joined = pat.rec.received.find((f) => f.type === 'joined' && f.room === room);
    assert.equal(joined.users.length, LIST_LIMIT, 'joined lists the first page only');
    assert.equal(joined.count, total, 'joined counts everyone');

    // The first page, you on it whether or not the server put you there, and
    // the others counted.
    let shown = await onlineList(pat.page);
    assert.equal(shown.names[0], 'Pat', 'you are listed first');
    assert.ok(shown.names.length === LIST_LIMIT || shown.names.length === LIST_LIMIT + 1, JSON.stringify(shown));
    assert.equal(shown.others, `and ${total - shown.names.length} others`);
    assert.deepEqual(shown.names.slice(1), [...shown.names.slice(1)].sort(), 'the rest by name');

    // "Show more" appends pages until everyone is listed, each user once.
    for (let clicks = 0; shown.others; clicks++) {
      assert.ok(clicks < Math.ceil(total / LIST_LIMIT) + 1, `too many clicks: ${JSON.stringify(shown)}`);
      const before = shown.names.length;
      await pat.page.click('#show-more');
      await pat.page.waitForFunction((n) => document.querySelectorAll('#users li').length > n, before);
      await pat.page.waitForFunction(() => document.getElementById('show-more').getAttribute('aria-busy') === 'false');
      shown = await onlineList(pat.page);
      assert.deepEqual(duplicates(shown.ids), [], 'no user listed twice');
      assert.equal(shown.others, shown.names.length < total ? `and ${total - shown.names.length} other${total - shown.names.length === 1 ? '' : 's'}` : '');
    }
    assert.deepEqual(shown.names, ['Pat', ...botNames]);
    assert.equal(shown.count, String(total));
    assert.ok(await pat.page.isHidden('#users-more'), 'nothing more to show');
    // Each `who` after the first carries the cursor of the page before; the last page has none.
    const whos = pat.rec.sent.filter((f) => f.type === 'who' && f.room === room);
    const pages = presenceFrames(pat.rec, room).filter((f) => f.event === 'snapshot');
    assert.equal(pages.length, whos.length, 'one page per who');
    assert.equal(whos[0].cursor, undefined);
    for (let i = 1; i < whos.length; i++) assert.equal(whos[i].cursor, pages[i - 1].cursor);
    assert.equal(pages[pages.length - 1].cursor, undefined, 'the last page has no cursor');
    for (const p of pages) assert.ok(p.users.length <= LIST_LIMIT);

    // Past events_max_members the diffs carry only the count: the listed
    // users stay as a sample and the count leads.
    const sample = shown.names;
    const extra = ['Bot-90', 'Bot-91', 'Bot-92'];
    for (const n of extra) await bots.join(room, n);
    const big = total + extra.length;
    await pat.page.waitForFunction((n) => document.getElementById('count').textContent === n, String(big));
    shown = await onlineList(pat.page);
    for (const n of sample) assert.ok(shown.names.includes(n), `${n} still listed`);
    assert.equal(shown.others, big > shown.names.length ? `and ${big - shown.names.length} other${big - shown.names.length === 1 ? '' : 's'}` : '');
    const countOnly = presenceFrames(pat.rec, room).find((f) => f.event === 'diff' && f.count === big);
    assert.ok(countOnly, 'a diff with the big count');
    assert.deepEqual([countOnly.joined, countOnly.left], [[], []], 'no names in a big room');
    assert.ok(!shown.names.includes('Bot-92'), 'Bot-92 came in a count-only diff');
    for (const n of extra) await bots.leave(n);
    await pat.page.waitForFunction((n) => document.getElementById('count').textContent === n, String(total));
    assertClean(pat.rec, 'Pat');
    await closeAll();
  });

  it('a name or message with a right-to-left override cannot reorder the page around it', async () => {
    const room = unique('e2e-bidi');
    // The server strips bidi controls from names (an override cannot hide in
    // one); what is left, right-to-left letters included, is still isolated.
    const ASKED = '\u202Eevil \u05E9\u05DC\u05D5\u05DD';
    const EVIL = 'evil \u05E9\u05DC\u05D5\u05DD';
    const TEXT = '\u202Ebackwards?';
    const e = await chat({ name: ASKED, room });
    const o = await chatElsewhere(await nodeOf(e.page), { name: 'Olga', room });
    await waitOnlineList(o.page, ['Olga', EVIL], 2);
    await e.page.fill('#input', 'x');
    await o.page.waitForFunction((n) => document.getElementById('typing').textContent === `${n} is typing…`, EVIL);
    // Typing line: "is typing…" stays to the right of the name, as in any
    // left-to-right line (an override that leaks would put it on the left).
    const typing = await o.page.evaluate(() => {
      const t = document.getElementById('typing');
      const name = t.firstElementChild;
      const range = document.createRange();
      range.selectNodeContents(t.lastChild);
      return {
        name: name.textContent, tail: t.lastChild.textContent,
        isolated: name.tagName === 'BDI' || getComputedStyle(name).unicodeBidi === 'isolate',
        nameRight: name.getBoundingClientRect().right, tailLeft: range.getBoundingClientRect().left,
      };
    });
    assert.deepEqual([typing.name, typing.tail], [EVIL, ' is typing…']);
    assert.ok(typing.tailLeft >= typing.nameRight - 1, `the tail follows the name: ${JSON.stringify(typing)}`);
    assert.ok(typing.isolated, 'the name in the typing line is isolated');
    await say(e.page, TEXT);
    await waitForText(o.page, TEXT);
    // A direct message to the user with that name: the DM label and the tag.
    await o.page.click('#users li:not(.self) button');
    assert.equal(await o.page.textContent('#dm-name'), EVIL);
    await say(o.page, 'hi there');
    await o.page.waitForFunction(() => Array.from(document.querySelectorAll('#messages li.msg.dm .text')).some((n) => n.textContent === 'hi there'));
    // The receiver sees the dialog in the list, with a badge, and opens it.
    await e.page.waitForSelector('#dialogs li .unread');
    await e.page.click('#dialogs li button');
    await e.page.waitForFunction(() => Array.from(document.querySelectorAll('#messages li.msg.dm .text')).some((n) => n.textContent === 'hi there'));

    // Every text that holds the name (its Hebrew) or the message (its
    // override) is exactly that user text, alone in a <bdi> or an element
    // with unicode-bidi: isolate; every attribute that holds it wraps it in
    // FSI ... PDI.
    // Both views are read: the open dialog (its messages, the dialog's name),
    // then the room (its messages), after Escape.
    for (const [who, c, want] of [['other', o, ['users', 'from', 'text', 'dm-name', 'tag']], ['self', e, ['me', 'users', 'from', 'text']]]) {
      const scan = () => c.page.evaluate(([name, msg, asked]) => {
        const out = { places: [], bad: [], attrs: [] };
        const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
          if (!n.textContent.includes('\u202E') && !n.textContent.includes('\u05E9')) continue;
          const p = n.parentElement;
          const isolated = p.tagName === 'BDI' || getComputedStyle(p).unicodeBidi === 'isolate';
          const place = p.id || ['users', 'typing', 'notice'].find((id) => p.closest(`#${id}`)) ||
            (p.closest('.tag') ? 'tag' : p.className);
          out.places.push(place);
          // (The name asked for shows once, in the notice that it was changed.)
          const whole = [name, msg, asked].includes(n.textContent);
          if (!isolated || !whole || p.childNodes.length !== 1) {
            out.bad.push({ place, tag: p.tagName, bidi: getComputedStyle(p).unicodeBidi, text: p.textContent });
          }
        }
        for (const x of document.querySelectorAll('[title], [placeholder], [aria-label]')) {
          for (const a of ['title', 'placeholder', 'aria-label']) {
            const v = x.getAttribute(a);
            if (v && (v.includes('\u202E') || v.includes('\u05E9'))) {
              out.attrs.push(v.includes('\u2068' + name + '\u2069') || v.includes('\u2068' + msg + '\u2069') ? 'ok' : v);
            }
          }
        }
        return out;
      }, [EVIL, TEXT, ASKED]);
      const inDialog = await scan();
      await c.page.click('#dm-cancel');
      await c.page.waitForSelector('#dm-target', { state: 'hidden' });
      const inRoom = await scan();
      const found = {
        places: inDialog.places.concat(inRoom.places),
        bad: inDialog.bad.concat(inRoom.bad),
        attrs: inDialog.attrs.concat(inRoom.attrs),
      };
      assert.deepEqual(found.bad, [], `${who}: user text not isolated`);
      for (const w of want) assert.ok(found.places.includes(w), `${who}: user text shown in ${w} (${found.places.join(', ')})`);
      assert.ok(found.attrs.every((a) => a === 'ok'), `${who}: attributes ${JSON.stringify(found.attrs)}`);
      assertClean(c.rec, who);
    }
    await closeAll();
  });

  it('direct messages: written while the other is offline, read on another node, then "Seen"', async () => {
    const room = unique('e2e-dm');
    const annId = unique('ann');
    const bobId = unique('bob');
    const ann = await chat({ room, token: token(annId, 'Ann') });
    const annNode = await nodeOf(ann.page);
    const bob = await chatElsewhere(annNode, { room, token: token(bobId, 'Bob') });
    await waitOnlineList(ann.page, ['Ann', 'Bob'], 2);
    // Ann opens a dialog with Bob from the online list; then Bob goes away.
    await ann.page.click('#users li:not(.self) button');
    await ann.page.waitForSelector('#dm-target:not([hidden])');
    await bob.context.close();
    await ann.page.waitForFunction(() => document.getElementById('count').textContent === '1');
    await say(ann.page, 'are you there?');
    await say(ann.page, 'call me');
    await waitForText(ann.page, 'call me');

    // Bob comes back, on a node other than Ann's: the dialog waits for him
    // with two unread; he opens it and reads both.
    const bob2 = await chatElsewhere(annNode, { room, token: token(bobId, 'Bob') });
    await bob2.page.waitForFunction(() => {
      const u = document.querySelector('#dialogs li .unread');
      return u && u.textContent === '2';
    });
    await bob2.page.click('#dialogs li button');
    await waitForText(bob2.page, 'are you there?');
    await waitForText(bob2.page, 'call me');
    await bob2.page.waitForSelector('#dialogs li .unread', { state: 'detached' });

    // Ann sees "Seen" under her last message.
    await ann.page.waitForSelector('#messages li.seen');
    const seenUnder = await ann.page.$eval('#messages li.seen', (li) => li.previousElementSibling.querySelector('.text').textContent);
    assert.equal(seenUnder, 'call me');

    // Across a reconnect of Bob's page: what Ann writes meanwhile shows, once.
    await bob2.context.setOffline(true);
    await bob2.page.waitForFunction(() => /reconnecting/.test(document.getElementById('status').textContent));
    await say(ann.page, 'while you were offline');
    await bob2.context.setOffline(false);
    await waitOnline(bob2.page, 20_000);
    await waitForText(bob2.page, 'while you were offline');
    await bob2.page.waitForTimeout(500);
    const shown = (await shownMessages(bob2.page)).map((m) => m.text);
    assert.deepEqual(shown, ['are you there?', 'call me', 'while you were offline']);
    assertClean(ann.rec, 'Ann');
    assertClean(bob2.rec, 'Bob');
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
