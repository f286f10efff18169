// The avbus panel in Debian's Chromium, driven by playwright-core. Run by
// tests/e2e/browser.rs, which owns the bus and the simulated devices: when this
// script needs something done on the server side it writes {"ask": ...} as one JSON
// line on stdout and reads the answer, one JSON line on stdin. It waits on selectors
// and page events only (every wait bounded, failing the test), never on a clock.
//
// Environment: AVBUS_URL (the panel), AVBUS_CHROMIUM (the browser binary),
// AVBUS_ARTIFACTS (where screenshots go).

import readline from 'node:readline';
import { chromium } from 'playwright-core';

const URL = process.env.AVBUS_URL;
const ARTIFACTS = process.env.AVBUS_ARTIFACTS;
const CHROMIUM = process.env.AVBUS_CHROMIUM ?? '/usr/bin/chromium';
/** The longest any one wait may take. */
const LIMIT = 20000;

let checks = 0;
const log = (...a) => console.error('panel.test:', ...a);
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  checks += 1;
  log(`ok ${checks} - ${what}`);
}

// ---- talking to tests/e2e/browser.rs ---------------------------------------------

const replies = [];
let waiting = null;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const msg = JSON.parse(line);
  if (waiting) {
    const w = waiting;
    waiting = null;
    w(msg);
  } else {
    replies.push(msg);
  }
});

async function ask(what, data = {}) {
  process.stdout.write(`${JSON.stringify({ ask: what, ...data })}\n`);
  const reply = replies.length ? replies.shift()
    : await bounded(new Promise((r) => { waiting = r; }), `the answer to ${what}`, 60000);
  if (!reply.ok) throw new Error(`${what} failed: ${reply.error ?? JSON.stringify(reply)}`);
  return reply;
}

function bounded(promise, what, ms = LIMIT) {
  let timer;
  const fail = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, fail]).finally(() => clearTimeout(timer));
}

// ---- page helpers -------------------------------------------------------------------

const at = (topic) => `[data-topic="${topic}"]`;

/** Waits until the control's shown value is `text`. */
async function waitValue(page, topic, text, who) {
  try {
    await page.waitForFunction(([sel, want]) => {
      const v = document.querySelector(sel)?.querySelector('.value');
      return v && v.textContent.trim() === want;
    }, [at(topic), text], { timeout: LIMIT });
  } catch (e) {
    const now = await page.evaluate((sel) => document.querySelector(sel)?.querySelector('.value')?.textContent, at(topic));
    throw new Error(`${who}: ${topic} shows ${JSON.stringify(now)}, expected ${JSON.stringify(text)} (${e.message})`);
  }
}

async function waitFor(page, selector, what) {
  try {
    await page.waitForSelector(selector, { timeout: LIMIT, state: 'attached' });
  } catch (e) {
    throw new Error(`${what}: ${selector} never appeared (${e.message})`);
  }
}

const text = (page, sel) => page.evaluate((s) => document.querySelector(s)?.textContent.trim(), sel);

// ---- the session ------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const problems = [];
async function open(name, contextOptions, hash = '') {
  const context = await browser.newContext(contextOptions);
  // Record every connection state the panel announces, so short-lived ones are seen.
  await context.addInitScript(() => {
    window.__states = [];
    document.addEventListener('avbus:state', (e) => window.__states.push(e.detail));
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    // Refused reconnection attempts while the gateway holds panels off are expected.
    if (m.type() === 'error' && !/WebSocket connection to .* failed/.test(m.text())) {
      problems.push(`${name} console: ${m.text()}`);
    }
  });
  await page.goto(URL + hash);
  return page;
}

let desktop;
let phone;
try {
  desktop = await open('desktop', { viewport: { width: 1280, height: 800 } });
  phone = await open('phone', {
    viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2,
  }, '#room=hall');

  // 1. The devices and their current state, on load.
  const topics = [
    'boardroom/projector/power', 'boardroom/switcher/out01_video', 'hall/dsp/Program.gain',
    'hall/dsp/Program.mute', 'hall/mixer/volume',
  ];
  const { values } = await ask('expect', { topics });
  for (const t of topics) await waitValue(desktop, t, values[t].display, 'desktop');
  check(true, 'the desktop panel shows the current state of every device on load');
  const devices = await desktop.$$eval('article.device', (els) => els.map((e) => e.dataset.device).sort());
  check(JSON.stringify(devices) === JSON.stringify([
    'boardroom/projector', 'boardroom/switcher', 'hall/camera', 'hall/dsp', 'hall/mixer',
  ]), `every device is listed (${devices})`);
  await waitFor(desktop, '#conn[data-state="connected"]', 'desktop connected');
  await waitFor(desktop, '#rtt[data-ms]', 'a measured round trip');
  check(/^\d+(\.\d)? ms$/.test(await text(desktop, '#rtt')), 'the header shows the measured round trip');
  await waitValue(phone, 'hall/dsp/Program.gain', values['hall/dsp/Program.gain'].display, 'phone');
  check(await phone.isHidden('section.room[data-room="boardroom"]'), 'the phone shows only its room');

  // 2. A click changes the simulated device; the other browser sees it.
  const muted = values['hall/dsp/Program.mute'].value === true;
  await desktop.click(`${at('hall/dsp/Program.mute')} button.switch`);
  await ask('dsp_muted', { muted: !muted });
  check(true, 'clicking the mute switch muted the simulated DSP');
  await waitFor(phone, `${at('hall/dsp/Program.mute')} button.switch[aria-checked="${!muted}"]`, 'the phone sees the mute');
  check(true, 'a second browser context sees the change');

  // 3. Changes made elsewhere appear in every panel: the CLI, a device's front panel.
  await ask('cli', { args: ['set', 'hall/dsp/Program.gain', '-12.5'] });
  await waitValue(desktop, 'hall/dsp/Program.gain', '-12.5 dB', 'desktop');
  await waitValue(phone, 'hall/dsp/Program.gain', '-12.5 dB', 'phone');
  check(true, 'a change made with the CLI appears in both panels');
  await ask('front_panel');
  await waitValue(desktop, 'boardroom/switcher/out01_video', 'Input 3', 'desktop');
  check(await desktop.$eval(`${at('boardroom/switcher/out01_video')} select`, (s) => s.value) === '3',
    'a tie made on the switcher\'s front panel appears in the panel');

  // Screenshots of a settled panel: desktop (the hall) and phone.
  await desktop.evaluate(() => { location.hash = '#room=hall'; });
  await waitFor(desktop, 'section.room[data-room="boardroom"][hidden]', 'the hall tab');
  await desktop.screenshot({ path: `${ARTIFACTS}/panel-desktop.png` });
  await phone.screenshot({ path: `${ARTIFACTS}/panel-phone.png` });
  await desktop.evaluate(() => { location.hash = ''; });
  await waitFor(desktop, 'section.room[data-room="boardroom"]:not([hidden])', 'all rooms');

  // 4. The server drops the WebSockets; a change is made while the panels are away.
  const seen = await desktop.evaluate(() => window.__states.length);
  const { dropped } = await ask('drop');
  check(dropped === 2, `the gateway dropped both WebSockets (${dropped})`);
  await waitFor(desktop, '#conn[data-state="reconnecting"]', 'desktop reconnecting');
  await waitFor(phone, '#conn[data-state="reconnecting"]', 'phone reconnecting');
  check(true, 'both panels show reconnecting');
  await ask('cli', { args: ['set', 'hall/dsp/Program.gain', '-30'] });
  check(await text(desktop, `${at('hall/dsp/Program.gain')} .value`) === '-12.5 dB',
    'while away the panel still shows the old value');
  await ask('restore');
  await waitFor(desktop, '#conn[data-state="connected"]', 'desktop back');
  await waitFor(phone, '#conn[data-state="connected"]', 'phone back');
  await waitValue(desktop, 'hall/dsp/Program.gain', '-30.0 dB', 'desktop');
  await waitValue(phone, 'hall/dsp/Program.gain', '-30.0 dB', 'phone');
  check(true, 'both panels resume and show the change made while they were away');
  const states = await desktop.evaluate((n) => window.__states.slice(n), seen);
  const last = states[states.length - 1];
  check(states.some((s) => s.state === 'reconnecting') && last.state === 'connected' && last.resumed === true,
    `the session was resumed, not replaced (${JSON.stringify(states)})`);

  // 5. Press and hold moves the camera; letting go stops it. A trigger with arguments.
  const pan = `${at('hall/camera/pan')} .value`;
  const before = await text(desktop, pan);
  const hold = desktop.locator(`${at('hall/camera/pan_right')} button.hold`);
  await hold.scrollIntoViewIfNeeded();
  await hold.hover();
  await desktop.mouse.down();
  await waitFor(desktop, `${at('hall/camera/pan_right')} button.hold[aria-pressed="true"]`, 'the press');
  await desktop.waitForFunction(([sel, was]) => document.querySelector(sel)?.textContent.trim() !== was,
    [pan, before], { timeout: LIMIT });
  await desktop.mouse.up();
  await waitFor(desktop, `${at('hall/camera/pan_right')} button.hold[aria-pressed="false"]`, 'the release');
  check(true, 'press-and-hold pans the camera while held and releases on lift');
  await desktop.fill(`${at('hall/camera/recall')} input.args`, '{"preset": 1}');
  await desktop.click(`${at('hall/camera/recall')} button.trigger`);
  await waitValue(desktop, 'hall/camera/pan', '-90 °', 'desktop');
  check(true, 'a trigger fires with its arguments');

  // 6. Meters move, fed by telemetry over the WebSocket (after the reconnect above:
  // the panel's tsub was sent again), never read with `get`.
  const meter = `${at('hall/mixer/level')} .meter`;
  await desktop.evaluate(() => {
    const c = window.avbusPanel.client;
    const get = c.get.bind(c);
    window.__gets = [];
    c.get = (topic) => { window.__gets.push(topic); return get(topic); };
  });
  for (const [name, page] of [['desktop', desktop], ['phone', phone]]) {
    await waitFor(page, `${meter}[aria-valuenow]`, `${name}: a meter reading`);
    for (let i = 0; i < 2; i++) {
      const was = await page.$eval(meter, (m) => m.getAttribute('aria-valuenow'));
      await page.waitForFunction(([sel, v]) => document.querySelector(sel)?.getAttribute('aria-valuenow') !== v,
        [meter, was], { timeout: LIMIT });
    }
    await waitFor(page, `${at('hall/mixer/level')}[data-quality="ok"]`, `${name}: a live meter`);
  }
  check(true, 'the meter moves in both panels');
  const tele = await desktop.evaluate(() => {
    const s = window.avbusPanel.meterSubs.get('hall')?.sub;
    return s && { sub: s.sub, hz: s.hz, streams: s.streams, stats: s.stats(), gets: window.__gets };
  });
  const level = tele?.stats.streams['hall/mixer/level'];
  check(tele && tele.sub !== null && tele.streams.some((d) => d.topic === 'hall/mixer/level' && d.channels === 2)
    && level?.received >= 2, `the meter's values arrive as telemetry (${JSON.stringify(tele)})`);
  check(tele.gets.length === 0, `no meter is read with get (${tele.gets})`);
  const bars = await desktop.$$eval(`${meter} .fill`, (fs) => fs.map((f) => Number(f.style.getPropertyValue('--p'))));
  check(bars.length === 2 && bars.every((p) => p > 0 && p <= 1), `a bar per channel, drawn (${bars})`);
  const rooms = await phone.evaluate(() => [...window.avbusPanel.meterSubs.keys()]);
  check(JSON.stringify(rooms) === '["hall"]', `the phone subscribes to its room's meters only (${rooms})`);

  // 7. A device goes offline: its controls grey out and cannot be used.
  await ask('switcher_off');
  await waitFor(desktop, '[data-device="boardroom/switcher"][data-online="false"]', 'the switcher offline');
  await waitFor(desktop, `${at('boardroom/switcher/out01_video')}[data-quality="offline"]`, 'offline quality');
  check(await desktop.$eval(`${at('boardroom/switcher/out01_video')} select`, (s) => s.disabled),
    'an offline device\'s controls are disabled');
  check(await desktop.$eval(`${at('boardroom/switcher/out01_video_mute')} button.switch`, (b) => b.disabled),
    'an offline device\'s switches are disabled');
  check(await desktop.$eval(`${at('boardroom/projector/power')}`, (c) => c.dataset.quality !== 'offline'),
    'other devices are untouched');
  await desktop.evaluate(() => document.querySelector('[data-device="boardroom/switcher"]').scrollIntoView({ block: 'start' }));
  await desktop.screenshot({ path: `${ARTIFACTS}/panel-offline-desktop.png` });

  check(problems.length === 0, `no page errors (${problems.join('; ')})`);
  process.stdout.write(`${JSON.stringify({ done: true, checks })}\n`);
  await browser.close();
  process.exit(0);
} catch (e) {
  log('FAILED:', e.stack ?? e);
  if (problems.length) log('page problems:', problems.join('; '));
  for (const [name, page] of [['desktop', desktop], ['phone', phone]]) {
    if (page) await page.screenshot({ path: `${ARTIFACTS}/failure-${name}.png` }).catch(() => {});
  }
  await browser.close().catch(() => {});
  process.exit(1);
}
