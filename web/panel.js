// avbus panel — the page at `/`: rooms → devices → controls, generated from the
// device descriptors the bus publishes at `$devices/<room>/<device>`, kept true by
// one subscription (snapshot, then live updates; a resync replaces everything).
//
// Meters are telemetry (docs/protocol.md §11): one `client.telemetry('<room>/#', 15)`
// subscription per room on screen that has meters, closed when the room is hidden or
// the page is; the client sends them again after every reconnect.
//
// Integrators embedding or testing the panel can listen for `avbus:state` events on
// `document` (detail: {state, resumed}); `state` is connecting, connected,
// reconnecting, resynced or closed — what the header shows.

import { Client } from './avbus.js';
import { createControl } from './controls.js';

/** Meter frames a second asked of the bus (each carries the newest value of every
 * meter that changed; more would not be seen on a panel). */
const METER_HZ = 15;

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

const STATE_TEXT = {
  idle: 'Starting',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  resynced: 'Resynced',
  closed: 'Closed',
};

class Panel {
  constructor(client) {
    this.client = client;
    /** `room/device` → descriptor, as published. */
    this.descriptors = new Map();
    /** topic → the newest update record. */
    this.records = new Map();
    /** `room/device` → {el, widgets: Map(control → widget), online}. */
    this.cards = new Map();
    /** Topics seen since a resync began; null when not resyncing. */
    this.resyncSeen = null;
    this.room = decodeURIComponent((location.hash.match(/^#room=(.+)$/) ?? [])[1] ?? '');
    this.connState = 'idle';
    this.resumed = null;
    this.everConnected = false;
    /** room → {sub, closed}: its meters' telemetry subscription. */
    this.meterSubs = new Map();
    /** meter topic → Map(offset → the newest telemetry value), for rebuilt cards. */
    this.meterValues = new Map();
  }

  start() {
    const c = this.client;
    c.on('state', ({ state }) => {
      // 'connected' is refined by the connected event (resumed or resynced).
      if (state !== 'connected') this.setConn(state);
    });
    c.on('connected', ({ resumed }) => {
      this.resumed = resumed;
      this.setConn(resumed || !this.everConnected ? 'connected' : 'resynced');
      this.everConnected = true;
    });
    c.on('resynced', () => this.setConn('resynced'));
    c.on('rtt', ({ ms }) => {
      const rtt = $('#rtt');
      rtt.textContent = `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
      rtt.dataset.ms = String(ms);
      rtt.title = 'Round trip to the bus, measured by ping';
    });
    c.on('connect_error', ({ reason }) => { $('#conn-detail').textContent = reason; });
    c.on('disconnected', ({ reason }) => { $('#conn-detail').textContent = reason; });
    c.on('error', ({ code, message }) => console.warn(`avbus: ${code}: ${message}`));
    c.subscribe(['$devices/+/+', '+/+/+'], (ev) => this.event(ev));
    c.connect();
    window.addEventListener('hashchange', () => {
      this.room = decodeURIComponent((location.hash.match(/^#room=(.+)$/) ?? [])[1] ?? '');
      this.renderRooms();
    });
    document.addEventListener('visibilitychange', () => this.syncMeters());
  }

  setConn(state) {
    this.connState = state;
    const chip = $('#conn');
    chip.dataset.state = state;
    chip.querySelector('.text').textContent = STATE_TEXT[state] ?? state;
    if (state === 'connected' || state === 'resynced') $('#conn-detail').textContent = '';
    if (state !== 'connected' && state !== 'resynced') {
      $('#rtt').textContent = '— ms';
      delete $('#rtt').dataset.ms;
    }
    document.body.classList.toggle('link-down', state === 'reconnecting' || state === 'connecting');
    document.dispatchEvent(new CustomEvent('avbus:state', { detail: { state, resumed: this.resumed } }));
  }

  event(ev) {
    switch (ev.type) {
      case 'update':
        if (this.resyncSeen) this.resyncSeen.add(ev.update.topic);
        this.update(ev.update);
        break;
      case 'resync':
        this.resyncSeen = new Set();
        break;
      case 'synced':
        if (this.resyncSeen) {
          // What the fresh snapshot did not repeat has no retained value any more.
          for (const topic of [...this.records.keys()]) {
            if (!this.resyncSeen.has(topic)) this.update({ topic, value: null, retain: true });
          }
          for (const key of [...this.descriptors.keys()]) {
            if (!this.resyncSeen.has(`$devices/${key}`)) this.update({ topic: `$devices/${key}`, value: null });
          }
          this.resyncSeen = null;
        }
        $('#devices').setAttribute('aria-busy', 'false');
        break;
      default:
        break;
    }
  }

  update(u) {
    if (u.topic.startsWith('$devices/')) {
      const key = u.topic.slice('$devices/'.length);
      if (u.value === null || typeof u.value !== 'object') {
        this.descriptors.delete(key);
        this.removeCard(key);
        for (const topic of [...this.meterValues.keys()]) {
          if (topic.startsWith(`${key}/`)) this.meterValues.delete(topic);
        }
      } else {
        this.descriptors.set(key, u.value);
        this.buildCard(key, u.value);
      }
      this.renderRooms();
      return;
    }
    const parts = u.topic.split('/');
    if (parts.length !== 3) return;
    const key = `${parts[0]}/${parts[1]}`;
    if (u.value === null && u.quality === undefined) this.records.delete(u.topic);
    else this.records.set(u.topic, u);
    const card = this.cards.get(key);
    if (!card) return;
    if (parts[2] === 'online') {
      this.setOnline(card, u.value === true);
      return;
    }
    card.widgets.get(parts[2])?.update(u);
  }

  setOnline(card, online) {
    card.online = online;
    card.el.dataset.online = String(online);
    const badge = card.el.querySelector('.badge');
    badge.textContent = online ? 'online' : 'offline';
    badge.className = `badge ${online ? 'online' : 'offline'}`;
    for (const w of card.widgets.values()) w.setOnline(online);
  }

  removeCard(key) {
    const card = this.cards.get(key);
    if (!card) return;
    for (const w of card.widgets.values()) w.destroy();
    card.el.remove();
    this.cards.delete(key);
  }

  buildCard(key, desc) {
    this.removeCard(key);
    const label = desc.label || desc.name;
    const headingId = `dev-${key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    const controls = el('div', { class: 'controls' });
    const cardEl = el('article', {
      class: 'device', 'data-device': key, 'data-class': desc.class, 'aria-labelledby': headingId,
    },
    el('header', {},
      el('h3', { id: headingId, text: label }),
      el('span', { class: 'meta', text: `${desc.class} · ${desc.driver}` }),
      el('span', { class: 'badge', text: '…' })),
    controls);
    const widgets = new Map();
    for (const spec of desc.controls ?? []) {
      if (spec.name === 'online') continue;
      const w = createControl({ client: this.client, label }, desc, spec);
      widgets.set(spec.name, w);
      controls.append(w.el);
    }
    const card = { el: cardEl, widgets, online: false };
    this.cards.set(key, card);
    this.roomGrid(desc.room).append(cardEl);
    this.sortGrid(desc.room);
    // Apply what is already known (records may arrive before their descriptor).
    const online = this.records.get(`${key}/online`);
    this.setOnline(card, online?.value === true);
    for (const [name, w] of widgets) {
      const r = this.records.get(`${key}/${name}`);
      if (r) w.update(r);
      for (const v of this.meterValues.get(`${key}/${name}`)?.values() ?? []) w.telemetry?.(v);
    }
  }

  roomGrid(room) {
    let section = document.querySelector(`section.room[data-room="${CSS.escape(room)}"]`);
    if (!section) {
      section = el('section', { class: 'room', 'data-room': room, 'aria-label': `Room ${room}` },
        el('h2', { text: room }), el('div', { class: 'grid' }));
      const main = $('#devices');
      const after = [...main.querySelectorAll('section.room')].find((s) => s.dataset.room > room);
      main.insertBefore(section, after ?? null);
    }
    return section.querySelector('.grid');
  }

  sortGrid(room) {
    const grid = this.roomGrid(room);
    const cards = [...grid.children].sort((a, b) => a.dataset.device.localeCompare(b.dataset.device));
    for (const c of cards) grid.append(c);
  }

  renderRooms() {
    const rooms = [...new Set([...this.descriptors.values()].map((d) => d.room))].sort();
    for (const s of document.querySelectorAll('section.room')) {
      if (!rooms.includes(s.dataset.room)) s.remove();
      else s.hidden = this.room !== '' && s.dataset.room !== this.room;
    }
    const nav = $('#rooms');
    nav.replaceChildren();
    const tab = (room, text) => {
      const a = el('a', { href: room ? `#room=${encodeURIComponent(room)}` : '#', text, 'data-room': room });
      if (room === this.room) a.setAttribute('aria-current', 'page');
      a.addEventListener('click', (e) => {
        if (room === '') { e.preventDefault(); history.pushState(null, '', location.pathname); this.room = ''; this.renderRooms(); }
      });
      return a;
    };
    nav.append(tab('', 'All rooms'));
    for (const r of rooms) nav.append(tab(r, r));
    $('#empty').hidden = rooms.length > 0;
    this.syncMeters();
  }

  /**
   * Keeps one telemetry subscription per room that is on screen and has meters, and
   * none for the others (or while the page is hidden).
   */
  syncMeters() {
    const want = new Set();
    if (!document.hidden) {
      for (const d of this.descriptors.values()) {
        if (this.room !== '' && d.room !== this.room) continue;
        if ((d.controls ?? []).some((c) => c.type === 'meter')) want.add(d.room);
      }
    }
    for (const [room, entry] of this.meterSubs) {
      if (want.has(room)) continue;
      entry.closed = true;
      entry.sub?.close();
      this.meterSubs.delete(room);
    }
    for (const room of want) {
      if (this.meterSubs.has(room)) continue;
      const entry = { sub: null, closed: false };
      this.meterSubs.set(room, entry);
      this.client.telemetry(`${room}/#`, METER_HZ, (v) => this.meterValue(v))
        .then((sub) => { if (entry.closed) sub.close(); else entry.sub = sub; })
        .catch((e) => {
          // Kept (not retried on every card change); a reload tries again.
          if (e.code !== 'closed') console.warn(`avbus: no meters for ${room}: ${e.code}: ${e.message}`);
        });
    }
  }

  /** One telemetry value: to its meter's widget, and kept for a rebuilt card. */
  meterValue(v) {
    let parts = this.meterValues.get(v.topic);
    if (!parts) { parts = new Map(); this.meterValues.set(v.topic, parts); }
    parts.set(v.offset, v);
    const cut = v.topic.lastIndexOf('/');
    this.cards.get(v.topic.slice(0, cut))?.widgets.get(v.topic.slice(cut + 1))?.telemetry?.(v);
  }
}

const client = new Client({ name: `panel ${navigator.platform || 'browser'}`.trim() });
const panel = new Panel(client);
window.avbusPanel = panel;
panel.start();
