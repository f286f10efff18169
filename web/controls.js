// avbus panel — one widget per control kind, generated from the device descriptor
// (docs/protocol.md §9.2): bool → switch, int/float → slider (dB taper where
// declared), enum → segmented buttons or a list, momentary → press-and-hold button,
// trigger → button, string → text field, meter → live bars (fed by telemetry).
// Read-only controls show their value. Every widget is built from real buttons and
// inputs, labelled for assistive technology, and greyed and disabled when its state
// is offline.

let nextId = 0;
const uid = (p) => `${p}-${++nextId}`;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

/** The dB taper of docs/protocol.md §9.3: position follows 10^(dB/60). */
const curve = (db) => 10 ** (db / 60);

/** The 0..1 slider position of `v` (as the bus computes it). */
export function toPosition(v, spec) {
  const [lo, hi, x] = spec.taper === 'dB'
    ? [curve(spec.min), curve(spec.max), curve(v)]
    : [spec.min, spec.max, v];
  if (hi <= lo) return 0;
  return Math.min(1, Math.max(0, (x - lo) / (hi - lo)));
}

/** The value at slider position `p`, on the control's step. */
export function fromPosition(p, spec) {
  let v;
  if (spec.taper === 'dB') {
    const [lo, hi] = [curve(spec.min), curve(spec.max)];
    const c = lo + p * (hi - lo);
    v = c <= 0 ? spec.min : 60 * Math.log10(c);
  } else {
    v = spec.min + p * (spec.max - spec.min);
  }
  const step = spec.step ?? (spec.type === 'int' ? 1 : null);
  if (step) v = spec.min + Math.round((v - spec.min) / step) * step;
  v = Math.min(spec.max, Math.max(spec.min, v));
  return spec.type === 'int' ? Math.round(v) : Number(v.toFixed(6));
}

/** Decimals that make `step` whole (at most 4), as the bus's display text. */
function decimals(step) {
  if (!step) return 1;
  let d = 0;
  let s = step;
  while (d < 4 && Math.abs(s - Math.round(s)) > 1e-9) { s *= 10; d += 1; }
  return d;
}

/** The display text of a number, as the bus would write it. */
export function formatNumber(v, spec) {
  const n = spec.type === 'int' ? String(Math.round(v)) : Number(v).toFixed(decimals(spec.step));
  return spec.unit ? `${n} ${spec.unit}` : n;
}

/** Whether a unit is a decibel scale (`dB`, `dBFS`, `dBu`, ...). */
const isDb = (unit) => /^db/i.test(unit ?? '');

/**
 * Where a meter reading sits on its bar, 0..1. A dB meter is drawn linear in dB
 * (as on a console's meter bridge), anything else linear in its value; both between
 * the descriptor's `min` and `max`, clamped. Not a number: 0.
 */
export function meterPosition(v, spec) {
  if (!Number.isFinite(v)) return 0;
  const [lo, hi] = [Number(spec.min), Number(spec.max)];
  if (!(hi > lo)) return 0;
  return Math.min(1, Math.max(0, (v - lo) / (hi - lo)));
}

/**
 * Where a meter's colours change (0..1 of the bar): a dB meter warns from 18 dB and
 * turns red from 6 dB below 0 dB (below its top when the scale ends under 0 dB); a
 * linear one at 70 % and 90 %.
 */
export function meterZones(spec) {
  if (isDb(spec.unit)) {
    const ref = Math.min(0, Number(spec.max));
    return { warn: meterPosition(ref - 18, spec), hot: meterPosition(ref - 6, spec) };
  }
  return { warn: 0.7, hot: 0.9 };
}

/** Parses a trigger's argument field: empty → nil, JSON when it is JSON, else text. */
export function parseArgs(text) {
  const t = text.trim();
  if (t === '') return null;
  try { return JSON.parse(t); } catch { return t; }
}

/**
 * Builds the widget for control `spec` of device `desc`. `ctx` has `client` (the
 * avbus Client) and `label` (the device's label, for accessible names). Returns
 * {el, update(record), setOnline(bool)}; a meter also has `telemetry(value)`, fed
 * with the values of `client.telemetry()` for its topic.
 */
export function createControl(ctx, desc, spec) {
  const topic = `${desc.room}/${desc.name}/${spec.name}`;
  const labelId = uid('label');
  const writable = spec.access !== 'read';
  const name = spec.label || spec.name;
  const value = el('span', { class: 'value', 'aria-hidden': 'true' });
  const tag = el('span', { class: 'quality-tag' });
  const error = el('div', { class: 'control-error', role: 'status', 'aria-live': 'polite' });
  const root = el('div', {
    class: 'control', 'data-topic': topic, 'data-kind': spec.type, 'data-quality': 'stale',
  },
  el('div', { class: 'control-head' },
    el('span', { class: 'label', id: labelId, text: name }), value, tag));
  const body = el('div', { class: 'control-body' });
  root.append(body, error);
  const aria = `${ctx.label}: ${name}`;

  let record = null;
  let online = true;
  let errorTimer = null;
  const inputs = [];
  const showError = (e) => {
    error.textContent = e && e.code ? `${e.code}: ${e.message}` : String(e);
    root.classList.add('failed');
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { error.textContent = ''; root.classList.remove('failed'); }, 6000);
  };
  const clearError = () => { error.textContent = ''; root.classList.remove('failed'); };
  const command = (p) => { clearError(); return p.catch(showError); };
  const set = (v) => command(ctx.client.set(topic, v));
  const current = () => {
    if (!record) return null;
    return record.quality === 'pending' && record.target !== undefined ? record.target : record.value;
  };
  const usable = () => writable && online && record?.quality !== 'offline';

  const widget = { el: root, topic, spec, render: () => {}, gone: new AbortController() };
  const k = spec.type;
  if (!writable && k !== 'meter' && k !== 'trigger') {
    // Read-only: the value, and a bar for numbers.
    if (k === 'int' || k === 'float') {
      const fill = el('div', { class: 'fill' });
      body.append(el('div', { class: 'bar readonly', 'aria-hidden': 'true' }, fill));
      widget.render = (r) => { fill.style.transform = `scaleX(${r?.position ?? 0})`; };
    }
    value.removeAttribute('aria-hidden');
    value.setAttribute('aria-labelledby', labelId);
  } else if (k === 'bool') {
    const knob = el('button', {
      class: 'switch', type: 'button', role: 'switch', 'aria-checked': 'false', 'aria-label': aria,
    }, el('span', { class: 'knob', 'aria-hidden': 'true' }));
    knob.addEventListener('click', () => set(!(current() === true)));
    body.append(knob);
    inputs.push(knob);
    widget.render = () => knob.setAttribute('aria-checked', String(current() === true));
  } else if (k === 'int' || k === 'float') {
    const slider = el('input', {
      type: 'range', min: 0, max: 1000, step: 1, value: 0, 'aria-label': aria,
    });
    body.append(slider);
    inputs.push(slider);
    let dragging = false;
    let inflight = false;
    let queued = null;
    const send = (v) => {
      if (inflight) { queued = v; return; }
      inflight = true;
      set(v).finally(() => {
        inflight = false;
        if (queued !== null) { const q = queued; queued = null; send(q); }
      });
    };
    const local = () => fromPosition(Number(slider.value) / 1000, spec);
    slider.addEventListener('pointerdown', () => { dragging = true; });
    slider.addEventListener('input', () => {
      const v = local();
      value.textContent = formatNumber(v, spec);
      slider.setAttribute('aria-valuetext', value.textContent);
      send(v); // at most one set in flight per slider; the newest value waits
    });
    slider.addEventListener('change', () => { dragging = false; });
    slider.addEventListener('blur', () => { dragging = false; });
    widget.render = (r) => {
      if (dragging || document.activeElement === slider && inflight) return;
      const v = current();
      if (typeof v === 'number' || typeof v === 'bigint') {
        slider.value = String(Math.round(toPosition(Number(v), spec) * 1000));
      }
      slider.setAttribute('aria-valuetext', r?.display ?? '');
    };
  } else if (k === 'enum') {
    const options = spec.options ?? [];
    if (options.length <= 5) {
      const group = el('div', { class: 'segments', role: 'radiogroup', 'aria-label': aria });
      const buttons = options.map((o) => {
        const b = el('button', {
          type: 'button', role: 'radio', 'aria-checked': 'false', 'data-id': o.id, text: o.label || o.id,
        });
        b.addEventListener('click', () => set(o.id));
        group.append(b);
        inputs.push(b);
        return b;
      });
      body.append(group);
      widget.render = () => {
        const v = current();
        for (const b of buttons) b.setAttribute('aria-checked', String(b.dataset.id === v));
      };
    } else {
      const select = el('select', { 'aria-label': aria });
      for (const o of options) select.append(el('option', { value: o.id, text: o.label || o.id }));
      select.addEventListener('change', () => set(select.value));
      body.append(select);
      inputs.push(select);
      widget.render = () => {
        const v = current();
        if (document.activeElement !== select && typeof v === 'string') select.value = v;
      };
    }
  } else if (k === 'momentary') {
    const hold = el('button', {
      class: 'hold', type: 'button', 'aria-pressed': 'false', 'aria-label': `${aria} (press and hold)`,
      text: name,
    });
    root.querySelector('.control-head .label').classList.add('visually-hidden');
    value.hidden = true;
    let pressed = false;
    const press = () => {
      if (pressed || !usable()) return;
      pressed = true;
      hold.classList.add('held');
      set(true);
    };
    const release = () => {
      if (!pressed) return;
      pressed = false;
      hold.classList.remove('held');
      set(false);
    };
    hold.addEventListener('pointerdown', (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      try { hold.setPointerCapture(e.pointerId); } catch { /* pointer already gone */ }
      press();
    });
    for (const ev of ['pointerup', 'pointercancel', 'lostpointercapture']) {
      hold.addEventListener(ev, release);
    }
    hold.addEventListener('keydown', (e) => {
      if ((e.key === ' ' || e.key === 'Enter') && !e.repeat) { e.preventDefault(); press(); }
    });
    hold.addEventListener('keyup', (e) => { if (e.key === ' ' || e.key === 'Enter') release(); });
    hold.addEventListener('blur', release);
    hold.addEventListener('contextmenu', (e) => e.preventDefault());
    // The page losing focus or visibility ends every press (the bus also releases a
    // momentary control when this panel's connection ends).
    window.addEventListener('blur', release, { signal: widget.gone.signal });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) release();
    }, { signal: widget.gone.signal });
    body.append(hold);
    inputs.push(hold);
    widget.render = () => hold.setAttribute('aria-pressed', String(current() === true));
    widget.release = release;
  } else if (k === 'trigger') {
    const go = el('button', { class: 'trigger', type: 'button', 'aria-label': aria, text: name });
    const args = el('input', {
      class: 'args', type: 'text', placeholder: 'args', 'aria-label': `${aria} arguments (JSON, optional)`,
      autocomplete: 'off', spellcheck: 'false',
    });
    go.addEventListener('click', () => {
      go.classList.add('busy');
      command(ctx.client.call(topic, parseArgs(args.value))).finally(() => go.classList.remove('busy'));
    });
    body.append(go, args);
    inputs.push(go, args);
    root.querySelector('.control-head .label').classList.add('visually-hidden');
  } else if (k === 'string') {
    const field = el('input', {
      type: 'text', maxlength: spec.max_len, 'aria-label': aria, autocomplete: 'off',
    });
    const apply = el('button', { type: 'button', class: 'apply', text: 'Set', 'aria-label': `Set ${aria}` });
    const submit = () => set(field.value);
    apply.addEventListener('click', submit);
    field.addEventListener('keydown', (e) => { if (e.key === 'Enter') submit(); });
    body.append(el('div', { class: 'text-row' }, field, apply));
    inputs.push(field, apply);
    widget.render = () => {
      const v = current();
      if (document.activeElement !== field && typeof v === 'string') field.value = v;
    };
  } else if (k === 'meter') {
    // Live from telemetry (the panel hands values to widget.telemetry()); the state
    // subscription only says whether the device is offline. Up to 8 channels: one
    // horizontal bar each; more (a console's inputs): a row of thin vertical bars,
    // which stays one line high on a phone. The text shows the value(s), or the peak.
    const channels = Math.max(1, Math.floor(Number(spec.channels) || 1));
    const columns = channels > 8;
    const meter = el('div', {
      class: `meter ${columns ? 'columns' : 'rows'}`, role: 'meter', 'aria-label': aria,
      'aria-valuemin': spec.min, 'aria-valuemax': spec.max, 'data-channels': channels,
    });
    const zones = meterZones(spec);
    meter.style.setProperty('--warn', String(zones.warn));
    meter.style.setProperty('--hot', String(zones.hot));
    const fills = [];
    for (let i = 0; i < channels; i++) {
      const fill = el('div', { class: 'fill' });
      meter.append(el('div', { class: 'bar' }, fill));
      fills.push(fill);
    }
    body.append(meter);
    const levels = new Array(channels).fill(NaN);
    widget.meter = { rateHz: Number(spec.rate_hz) || 0, channels, levels, seen: false, stale: true };
    widget.render = () => {
      fills.forEach((f, i) => f.style.setProperty('--p', String(meterPosition(levels[i], spec))));
      const shown = levels.map((v, i) => [v, i]).filter(([v]) => Number.isFinite(v));
      if (shown.length === 0) return;
      const [peak, at] = shown.reduce((a, b) => (b[0] > a[0] ? b : a));
      const unit = spec.unit ? ` ${spec.unit}` : '';
      meter.setAttribute('aria-valuenow', String(Math.round(peak * 100) / 100));
      if (channels <= 4) {
        value.textContent = shown.map(([v]) => v.toFixed(1)).join(' / ') + unit;
        meter.setAttribute('aria-valuetext', shown.map(([v]) => formatNumber(v, spec)).join(' / '));
      } else {
        value.textContent = `peak ${peak.toFixed(1)}${unit}`;
        meter.setAttribute('aria-valuetext', `peak ${formatNumber(peak, spec)}, channel ${at + 1}`);
      }
    };
    /** One telemetry value ({value, offset, stale}) of this meter's stream. */
    widget.telemetry = (v) => {
      const vs = Array.isArray(v.value) ? v.value : [v.value];
      const from = Number(v.offset) || 0;
      vs.forEach((x, i) => { if (from + i < channels) levels[from + i] = Number(x); });
      widget.meter.seen = true;
      widget.meter.stale = v.stale === true;
      widget.render();
      applyState();
    };
  }

  const applyState = () => {
    // A trigger has no state: it is usable whenever its device is online.
    const fallback = k === 'trigger' || record ? 'ok' : 'stale';
    let quality = !online ? 'offline' : (record?.quality ?? fallback);
    if (k === 'meter') {
      // A meter's retained record carries no value: telemetry says ok or stale.
      const m = widget.meter;
      quality = !online || record?.quality === 'offline' ? 'offline' : (!m.seen || m.stale ? 'stale' : 'ok');
    }
    root.dataset.quality = quality;
    tag.textContent = quality === 'ok' ? '' : quality;
    const on = usable();
    for (const i of inputs) i.disabled = !on;
    root.classList.toggle('disabled', !on);
  };

  widget.update = (r) => {
    record = r;
    if (k !== 'meter' && k !== 'trigger') value.textContent = r?.display ?? (r?.value === null ? '—' : '');
    if (k !== 'meter') widget.render(r);
    applyState();
  };
  widget.destroy = () => {
    widget.release?.();
    widget.gone.abort();
    clearTimeout(errorTimer);
  };
  widget.setOnline = (o) => {
    online = o;
    if (!o) widget.release?.();
    applyState();
  };
  applyState();
  return widget;
}
