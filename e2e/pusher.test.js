'use strict';
// The Pusher front door with the real clients from npm: pusher-js (in Node)
// and the `pusher` server SDK, against the nodes of the process cluster that
// e2e/run.sh starts (the app is BANTER__PUSHER__APP_ID/KEY/SECRET).
const { describe, it, after } = require('node:test');
const assert = require('node:assert/strict');
const PusherJs = require('pusher-js');
const Pusher = require('pusher');
const { nodePid } = require('./helpers');

const APP_ID = process.env.BANTER__PUSHER__APP_ID || '12345';
const KEY = process.env.BANTER__PUSHER__KEY || 'e2e-key';
const SECRET = process.env.BANTER__PUSHER__SECRET || 'e2e-pusher-secret';
const PORTS = (process.env.E2E_NODE_PORTS || '8081 8082 8083').split(/[\s,]+/).map(Number);
const NGINX = Number(new URL(process.env.BANTER_URL || 'http://127.0.0.1:8080/').port);
const STEP_MS = 10_000;

// The server SDK, on one node.
function server(port) {
  return new Pusher({ appId: APP_ID, key: KEY, secret: SECRET, host: '127.0.0.1', port: String(port), useTLS: false });
}

const clients = [];
// A pusher-js client on `port`; private channels are authorised here with
// the server SDK's own signing (what an app's auth endpoint does).
function client(port, { authorize = true, user = null } = {}) {
  const signer = server(port);
  const c = new PusherJs(KEY, {
    wsHost: '127.0.0.1', wsPort: port, forceTLS: false, enabledTransports: ['ws'], disableStats: true, cluster: 'banter',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        if (!authorize) return callback(null, { auth: `${KEY}:${'0'.repeat(64)}` });
        callback(null, channelName.startsWith('presence-')
          ? signer.authorizeChannel(socketId, channelName, user)
          : signer.authorizeChannel(socketId, channelName));
      },
    },
  });
  clients.push(c);
  return c;
}

function until(what, check, ms = STEP_MS) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      let v;
      try { v = check(); } catch (e) { return reject(e); }
      if (v) return resolve(v);
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(poll, 20);
    };
    poll();
  });
}

function connected(c) {
  return new Promise((resolve, reject) => {
    if (c.connection.state === 'connected') return resolve();
    const timer = setTimeout(() => reject(new Error(`not connected: ${c.connection.state}`)), STEP_MS);
    c.connection.bind('connected', () => { clearTimeout(timer); resolve(); });
  });
}

function subscribed(c, name) {
  return new Promise((resolve, reject) => {
    const ch = c.subscribe(name);
    const timer = setTimeout(() => reject(new Error(`no subscription to ${name}`)), STEP_MS);
    ch.bind('pusher:subscription_succeeded', () => { clearTimeout(timer); resolve(ch); });
    ch.bind('pusher:subscription_error', (e) => { clearTimeout(timer); reject(Object.assign(new Error('subscription_error'), { detail: e })); });
  });
}

// How many sockets a node has open (its `banter_connections` gauge).
async function connections(port) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = text.match(/^banter_connections\{[^}]*\} (\d+)/m);
  assert.ok(m, 'banter_connections in /metrics');
  return Number(m[1]);
}

function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
}

describe('pusher-js and the pusher SDK against Banter', { timeout: 120_000 }, () => {
  after(() => { for (const c of clients) c.disconnect(); });

  it('a public channel: events triggered on another node arrive, in order', async () => {
    const a = client(PORTS[0]);
    await connected(a);
    assert.match(a.connection.socket_id, /^\d+\.\d+$/);
    const name = unique('orders');
    const ch = await subscribed(a, name);
    const got = [];
    ch.bind('update', (data) => got.push(data));
    const sdk = server(PORTS[1]);
    for (let i = 0; i < 50; i++) {
      const res = await sdk.trigger(name, 'update', { n: i });
      assert.equal(res.status, 200);
    }
    await until('50 events', () => got.length === 50);
    assert.deepEqual(got.map((d) => d.n), [...Array(50).keys()], 'one order');
    // A batch, to two channels at once.
    const other = await subscribed(a, `${name}-b`);
    const seen = [];
    other.bind('b', (d) => seen.push(d));
    ch.bind('b', (d) => seen.push(d));
    await sdk.triggerBatch([{ channel: name, name: 'b', data: JSON.stringify('first') }, { channel: `${name}-b`, name: 'b', data: JSON.stringify('second') }]);
    await until('the batch', () => seen.length === 2);
    assert.deepEqual(seen, ['first', 'second']);
  });

  it('subscription counts add up over the nodes: channel.subscriptionCount and pusher:subscription_count', async () => {
    const [a, b, c] = [client(PORTS[0]), client(PORTS[1]), client(PORTS[2 % PORTS.length])];
    await Promise.all([connected(a), connected(b), connected(c)]);
    const name = unique('counted');
    const cha = await subscribed(a, name);
    const counts = [];
    cha.bind('pusher:subscription_count', (d) => counts.push(d.subscription_count));
    const chb = await subscribed(b, name);
    await subscribed(c, name);
    await until('a count of 3 at a', () => cha.subscriptionCount === 3);
    await until('a count of 3 at b', () => chb.subscriptionCount === 3);
    assert.equal(counts[counts.length - 1], 3, `the event too: ${counts}`);
    const res = await server(PORTS[1]).get({ path: `/channels/${name}`, params: { info: 'subscription_count' } });
    assert.equal((await res.json()).subscription_count, 3);
    c.unsubscribe(name);
    await until('a count of 2 at a', () => cha.subscriptionCount === 2);
  });

  it('private channels: a signed subscription succeeds, a bad signature is refused', async () => {
    const a = client(PORTS[0]);
    const bad = client(PORTS[1], { authorize: false });
    await Promise.all([connected(a), connected(bad)]);
    const name = unique('private-room');
    await subscribed(a, name);
    await assert.rejects(subscribed(bad, name), (e) => e.detail && e.detail.status === 401);
  });

  it('client events reach the other subscribers on other nodes, never the sender', async () => {
    const a = client(PORTS[0]);
    const b = client(PORTS[1]);
    await Promise.all([connected(a), connected(b)]);
    const name = unique('private-chat');
    const [cha, chb] = await Promise.all([subscribed(a, name), subscribed(b, name)]);
    const atA = [];
    const atB = [];
    cha.bind('client-typing', (d) => atA.push(d));
    chb.bind('client-typing', (d) => atB.push(d));
    assert.equal(cha.trigger('client-typing', { who: 'a' }), true);
    await until('b hears a', () => atB.length === 1);
    assert.deepEqual(atB, [{ who: 'a' }]);
    chb.trigger('client-typing', { who: 'b' });
    await until('a hears b', () => atA.length === 1);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(atA, [{ who: 'b' }], 'a never hears itself');
    assert.deepEqual(atB, [{ who: 'a' }], 'b never hears itself');
    // On a public channel a client event is refused (pusher:error).
    const errors = [];
    a.connection.bind('error', (e) => errors.push(e));
    const pub = await subscribed(a, unique('public'));
    pub.trigger('client-x', {});
    await until('an error', () => errors.length === 1);
    assert.equal(errors[0].data.code, 4301);
  });

  it('presence channels: each user once cluster-wide, member_added on the first connection, member_removed on the last', async () => {
    const name = unique('presence-room');
    const ann = client(PORTS[0], { user: { user_id: 'ann', user_info: { name: 'Ann' } } });
    await connected(ann);
    const chAnn = await subscribed(ann, name);
    assert.equal(chAnn.members.count, 1);
    assert.deepEqual(chAnn.members.me, { id: 'ann', info: { name: 'Ann' } });
    const added = [];
    const removed = [];
    chAnn.bind('pusher:member_added', (m) => added.push(m));
    chAnn.bind('pusher:member_removed', (m) => removed.push(m));

    // Bob, on the other node, sees both, with Ann's info.
    const bob1 = client(PORTS[1], { user: { user_id: 'bob', user_info: { name: 'Bob' } } });
    await connected(bob1);
    const chBob = await subscribed(bob1, name);
    assert.equal(chBob.members.count, 2);
    assert.deepEqual(chBob.members.get('ann'), { id: 'ann', info: { name: 'Ann' } });
    await until('ann hears bob', () => added.length === 1);
    assert.deepEqual(added[0], { id: 'bob', info: { name: 'Bob' } });

    // Bob's second connection (on Ann's node) announces nothing.
    const bob2 = client(PORTS[0], { user: { user_id: 'bob', user_info: { name: 'Bob' } } });
    await connected(bob2);
    const chBob2 = await subscribed(bob2, name);
    assert.equal(chBob2.members.count, 2);
    // The server sees two users.
    const sdk = server(PORTS[1]);
    const users = await (await sdk.get({ path: `/channels/${name}/users`, params: {} })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'bob']);
    const info = await (await sdk.get({ path: `/channels/${name}`, params: { info: 'user_count' } })).json();
    assert.equal(info.user_count, 2);

    // A client event on a presence channel carries its sender's user_id.
    const events = [];
    chAnn.bind('client-hi', (data, meta) => events.push({ data, user: meta && meta.user_id }));
    chBob.trigger('client-hi', { x: 1 });
    await until('the client event', () => events.length === 1);
    assert.deepEqual(events[0], { data: { x: 1 }, user: 'bob' });

    // Bob leaves with one connection: still there. With the last: gone.
    bob1.unsubscribe(name);
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(removed.length, 0, 'bob is still there on his other connection');
    assert.equal(added.length, 1, 'and was never announced twice');
    bob2.disconnect();
    await until('bob gone', () => removed.length === 1);
    assert.equal(removed[0].id, 'bob');
    assert.equal(chAnn.members.count, 1);
  });

  it('a trigger can leave out one socket (socket_id)', async () => {
    const a = client(PORTS[0]);
    const b = client(PORTS[1]);
    await Promise.all([connected(a), connected(b)]);
    const name = unique('news');
    const [cha, chb] = await Promise.all([subscribed(a, name), subscribed(b, name)]);
    const atA = [];
    const atB = [];
    cha.bind('e', (d) => atA.push(d));
    chb.bind('e', (d) => atB.push(d));
    await server(PORTS[1]).trigger(name, 'e', 'not for a', { socket_id: a.connection.socket_id });
    await server(PORTS[1]).trigger(name, 'e', 'for both');
    await until('b got both', () => atB.length === 2);
    await until('a got one', () => atA.length === 1);
    assert.deepEqual(atA, ['for both']);
  });

  it('the channel queries see subscribers on every node', async () => {
    const a = client(PORTS[0]);
    await connected(a);
    const name = unique('watched');
    await subscribed(a, name);
    const sdk = server(PORTS[1]);
    const list = await (await sdk.get({ path: '/channels', params: {} })).json();
    assert.ok(name in list.channels, JSON.stringify(list));
    const one = await (await sdk.get({ path: `/channels/${name}`, params: {} })).json();
    assert.equal(one.occupied, true);
    const none = await (await sdk.get({ path: `/channels/${unique('empty')}`, params: {} })).json();
    assert.equal(none.occupied, false);
    await assert.rejects(sdk.get({ path: `/channels/${name}/users`, params: {} }), (e) => e.status === 400);
    // A bad signature is 401.
    const wrong = new Pusher({ appId: APP_ID, key: KEY, secret: 'not-the-secret', host: '127.0.0.1', port: String(PORTS[1]), useTLS: false });
    await assert.rejects(wrong.trigger(name, 'e', 'x'), (e) => e.status === 401);
  });

  it('a wrong app key is closed with 4001', async () => {
    const c = new PusherJs('not-the-key', { wsHost: '127.0.0.1', wsPort: PORTS[0], forceTLS: false, enabledTransports: ['ws'], disableStats: true, cluster: 'banter' });
    clients.push(c);
    const errors = [];
    c.connection.bind('error', (e) => errors.push(e));
    // (pusher-js wraps a handshake's refusal: {type: 'WebSocketError', error: {data: {code}}}.)
    const code = (e) => (e && e.data && e.data.code) || (e && e.error && e.error.data && e.error.data.code);
    await until('the 4001', () => errors.some((e) => code(e) === 4001));
    // 4001 is final for pusher-js: it does not come back.
    await new Promise((r) => setTimeout(r, 1500));
    assert.notEqual(c.connection.state, 'connected');
    assert.equal(errors.filter((e) => code(e) === 4001).length, 1, JSON.stringify(errors));
  });

  it('after its node is stopped (SIGTERM), a client comes back through nginx, resubscribes and gets what follows', async () => {
    const before = await Promise.all(PORTS.map(connections));
    const c = client(NGINX);
    await connected(c);
    const name = unique('durable');
    const ch = await subscribed(c, name);
    const got = [];
    ch.bind('e', (d) => got.push(d));
    // Which node holds the socket: the one with one connection more.
    const now = await Promise.all(PORTS.map(connections));
    const holders = PORTS.map((_, i) => i).filter((i) => now[i] === before[i] + 1);
    assert.equal(holders.length, 1, `the socket is on one node: ${before} -> ${now}`);
    const node = `node${holders[0] + 1}`;
    const firstId = c.connection.socket_id;
    process.kill(nodePid(node), 'SIGTERM');
    await until('a new connection', () => c.connection.state === 'connected' && c.connection.socket_id !== firstId, 20_000);
    const alive = PORTS.find((_, i) => `node${i + 1}` !== node);
    // pusher-js resubscribes on its own; once the new node has the channel,
    // events flow again.
    const deadline = Date.now() + 20_000;
    for (let sent = 0; !got.length; sent++) {
      assert.ok(Date.now() < deadline, 'an event after the move');
      await server(alive).trigger(name, 'e', `after ${sent}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(got[0], /^after \d+$/);
  });
});
