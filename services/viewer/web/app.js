// telemesh viewer: the page. Plain JavaScript, no build step, no library.
// Everything it keeps is bounded (LIMITS), so a tab left open for hours
// stays as light as it started.
'use strict';
(() => {
  const LIMITS = { liveRows: 200, rawRows: 200, points: 600, invalid: 50, seenIds: 2000 };
  const TOKEN_KEY = 'telemesh-viewer-token';
  const $ = (id) => document.getElementById(id);
  // The stages, the services that run them and the switches come from the
  // server (/api/meta), which has them from the one list the Go code uses.
  const stageService = (stage) => state.meta.stage_services[stage];

  const state = {
    meta: { read_only: true, history_minutes: 10, heartbeat_ms: 15000, bucket: 'device-states', switch_names: [], stages: [], stage_services: {} },
    devByUUID: new Map(),
    devices: [],
    filter: { org: '', device: '', topic: '' },
    raw: false,
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    es: null,
    lastSeen: 0,
    lastEventId: '',
    retryDelay: 1000,
    reconnectTimer: 0,
    seen: new Set(),
    seenOrder: [],
    liveCount: 0,
    dropped: 0,
    device: null,
    health: null,
    rendered: {},
    retrying: new Set(),
  };

  // ---- small helpers ------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function fmtNum(v) {
    if (typeof v !== 'number' || !isFinite(v)) return String(v);
    if (Number.isInteger(v)) return String(v);
    return String(Math.round(v * 1000) / 1000);
  }

  function fmtVal(v) {
    if (v === null || v === undefined) return '—';
    if (typeof v === 'number') return fmtNum(v);
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (isNaN(d)) return '—';
    return d.toLocaleTimeString([], { hour12: false });
  }

  function fmtDateTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (isNaN(d)) return '—';
    return d.toLocaleString([], { hour12: false });
  }

  function fmtDur(us) {
    if (us === null || us === undefined) return '—';
    if (us < 1000) return us + ' µs';
    if (us < 1e6) return (us / 1000).toFixed(1) + ' ms';
    return (us / 1e6).toFixed(2) + ' s';
  }

  function fmtPct(p) { return (Math.round(p * 10) / 10).toFixed(1) + ' %'; }

  function badgeClass(b) { return (b || '').toLowerCase().replace(/\s+/g, '-'); }

  function shortId(id) { return id ? String(id).slice(0, 8) + '…' : '—'; }

  function reasonText(u) {
    if (!u || typeof u !== 'object') return String(u);
    switch (u.reason) {
      case 'missing_input': return 'missing input ' + (u.missing_inputs || []).join(', ');
      case 'cycle': return 'cycle ' + (u.cycle || []).join(' → ');
      default: return (u.reason || 'unresolved') + (u.detail ? ': ' + u.detail : '');
    }
  }

  function errorText(e) {
    if (!e || typeof e !== 'object') return String(e);
    const who = e.parameter ? e.parameter + ': ' : '';
    return who + (e.message || e.code || JSON.stringify(e)) + (e.critical ? ' (critical)' : '');
  }

  let toastTimer = 0;
  function toast(text, isError) {
    const t = $('toast');
    t.textContent = text;
    t.className = isError ? 'error' : '';
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, isError ? 8000 : 4000);
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = { Accept: 'application/json' };
    if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
    const token = opts.token !== undefined ? opts.token : state.token;
    if (opts.auth && token) headers.Authorization = 'Bearer ' + token;
    const res = await fetch(path, {
      method: opts.method || 'GET', headers, cache: 'no-store',
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
    let data = null;
    if (res.status !== 204) {
      try { data = await res.json(); } catch (_) { data = null; }
    }
    if (!res.ok) {
      const err = new Error((data && data.error) || res.statusText || ('HTTP ' + res.status));
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // ---- tabs -----------------------------------------------------------------

  function showTab(name) {
    for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.tab === name);
    for (const s of document.querySelectorAll('.tab')) s.classList.toggle('active', s.id === 'tab-' + name);
    if (name === 'health') renderHealth(true);
  }

  function route() {
    const h = decodeURIComponent(location.hash.replace(/^#/, ''));
    if (h.startsWith('lookup=')) {
      showTab('lookup');
      lookup(h.slice('lookup='.length));
    } else if (h === 'health' || h === 'lookup' || h === 'live') {
      showTab(h);
    }
  }

  // ---- token and confirmation ----------------------------------------------

  function renderAuth() {
    const b = $('auth-btn');
    if (state.meta.read_only) {
      b.textContent = 'Read-only';
      b.disabled = true;
      b.title = 'No TELEMESH_VIEWER_TOKEN is configured: retries and switches are refused.';
    } else if (state.token) {
      b.textContent = 'Operator ✓';
      b.disabled = false;
      b.title = 'Retries and switches are allowed in this tab. Click to forget the token.';
    } else {
      b.textContent = 'Unlock';
      b.disabled = false;
      b.title = 'Enter the viewer token to retry publishes and change switches.';
    }
  }

  function forgetToken() {
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    renderAuth();
  }

  function askToken() {
    return new Promise((resolve) => {
      const d = $('token-dialog');
      const input = $('token-input');
      const errorEl = $('token-error');
      input.value = '';
      errorEl.textContent = '';
      const form = $('token-form');
      const done = (ok) => {
        form.onsubmit = null;
        $('token-cancel').onclick = null;
        d.oncancel = null;
        if (d.open) d.close();
        resolve(ok);
      };
      const tryToken = async () => {
        const candidate = input.value.trim();
        if (!candidate) { errorEl.textContent = 'Enter the token.'; return; }
        try {
          await api('/api/auth', { method: 'POST', auth: true, token: candidate });
          state.token = candidate;
          sessionStorage.setItem(TOKEN_KEY, candidate);
          renderAuth();
          done(true);
        } catch (e) {
          errorEl.textContent = e.status === 401 ? 'That is not the viewer token.' : e.message;
          if (e.status === 403) setTimeout(() => done(false), 2500);
        }
      };
      form.onsubmit = (e) => { e.preventDefault(); tryToken(); };
      $('token-cancel').onclick = () => done(false);
      d.oncancel = (e) => { e.preventDefault(); done(false); };
      d.showModal();
      input.focus();
    });
  }

  function confirmDialog(text, okLabel) {
    return new Promise((resolve) => {
      const d = $('confirm-dialog');
      $('confirm-text').textContent = text;
      $('confirm-ok').textContent = okLabel || 'Confirm';
      const done = (ok) => {
        $('confirm-ok').onclick = null;
        $('confirm-cancel').onclick = null;
        d.oncancel = null;
        if (d.open) d.close();
        resolve(ok);
      };
      $('confirm-ok').onclick = () => done(true);
      $('confirm-cancel').onclick = () => done(false);
      d.oncancel = (e) => { e.preventDefault(); done(false); };
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  // withToken runs a change: it asks for the token first when there is none,
  // and forgets a token the viewer refuses.
  async function withToken(action) {
    if (state.meta.read_only) {
      toast('This viewer is read-only: start it with TELEMESH_VIEWER_TOKEN (or --viewer-token-file) to retry and change switches.', true);
      return undefined;
    }
    if (!state.token && !(await askToken())) return undefined;
    try {
      return await action();
    } catch (e) {
      if (e.status === 401) {
        forgetToken();
        toast('The viewer refused the token; unlock again.', true);
      } else {
        toast(e.message, true);
      }
      return undefined;
    }
  }

  // ---- catalog and filters ------------------------------------------------

  async function loadCatalog() {
    try {
      const c = await api('/api/catalog');
      state.devices = c.devices || [];
      state.devByUUID = new Map(state.devices.map((d) => [d.uuid, d]));
      fillSelect($('f-org'), (c.organizations || []).map((o) => [o.slug, o.slug + ' — ' + o.name]));
      fillDevices();
      fillSelect($('f-topic'), (c.topics || []).map((t) => [t, t]));
    } catch (e) {
      toast('Cannot load the device catalog: ' + e.message, true);
      setTimeout(loadCatalog, 5000);
    }
  }

  function fillSelect(sel, options) {
    const current = sel.value;
    sel.replaceChildren(el('option', { value: '' }, 'all'), ...options.map(([v, label]) => el('option', { value: v }, label)));
    sel.value = options.some(([v]) => v === current) ? current : '';
  }

  function fillDevices() {
    const org = $('f-org').value;
    fillSelect($('f-device'), state.devices
      .filter((d) => !org || d.organization === org)
      .map((d) => [d.uuid, d.external_id + (d.active ? '' : ' (inactive)')]));
  }

  function onFilterChange() {
    state.filter = { org: $('f-org').value, device: $('f-device').value, topic: $('f-topic').value };
    state.raw = $('f-raw').checked;
    $('raw-panel').hidden = !state.raw;
    clearLive();
    if (state.filter.device && (!state.device || state.device.uuid !== state.filter.device)) selectDevice(state.filter.device);
    connect(false);
  }

  // ---- the live connection ------------------------------------------------

  function setConn(s) {
    const c = $('conn');
    c.className = 'conn ' + s;
    c.textContent = s;
  }

  function touch() {
    state.lastSeen = Date.now();
    state.retryDelay = 1000;
  }

  // connect opens the live connection. resume asks the viewer for what was
  // missed since the last event (EventSource does that by itself on its own
  // reconnects; this is for the ones the page makes).
  function connect(resume) {
    clearTimeout(state.reconnectTimer);
    if (state.es) state.es.close();
    const q = new URLSearchParams();
    for (const k of ['org', 'device', 'topic']) if (state.filter[k]) q.set(k, state.filter[k]);
    if (state.raw) q.set('raw', '1');
    if (resume && state.lastEventId) q.set('last_event_id', state.lastEventId);
    else state.lastEventId = '';
    const qs = q.toString();
    const es = new EventSource('/api/events' + (qs ? '?' + qs : ''));
    state.es = es;
    state.lastSeen = Date.now();
    setConn('connecting');
    es.onopen = () => { setConn('live'); touch(); };
    es.onerror = () => {
      if (es !== state.es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The viewer refused (too many connections) or is gone: try again
        // later, more slowly each time.
        setConn('offline');
        state.reconnectTimer = setTimeout(() => connect(true), state.retryDelay);
        state.retryDelay = Math.min(state.retryDelay * 2, 30000);
      } else {
        setConn('reconnecting');
      }
    };
    const on = (kind, fn) => es.addEventListener(kind, (e) => {
      if (es !== state.es) return;
      touch();
      if (e.lastEventId) state.lastEventId = e.lastEventId;
      let data = null;
      try { data = JSON.parse(e.data); } catch (_) { return; }
      fn(data);
    });
    on('hello', (h) => {
      if (h.heartbeat_ms) state.meta.heartbeat_ms = h.heartbeat_ms;
      setConn('live');
    });
    on('ping', () => {});
    on('telemetry', onLive);
    on('invalid', onLive);
    on('raw', onRaw);
    on('health', (h) => { state.health = h; renderHealth(false); });
    on('dropped', (d) => {
      state.dropped += d.count;
      $('live-note').textContent = state.dropped + ' events skipped: this page could not keep up with the stream.';
    });
    on('notice', (n) => {
      if (n.code === 'raw') $('raw-note').textContent = n.text;
      else $('live-note').textContent = n.text;
    });
  }

  // The watchdog reconnects a connection that went quiet for longer than a
  // few heartbeats: a proxy or a sleeping laptop may have dropped it without
  // EventSource noticing.
  setInterval(() => {
    if (!state.es) return;
    const quiet = Date.now() - state.lastSeen;
    if (quiet > state.meta.heartbeat_ms * 2.5 + 5000) connect(true);
  }, 5000);

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.es && state.es.readyState === EventSource.CLOSED) connect(true);
  });

  // ---- live telemetry -----------------------------------------------------

  function remember(id) {
    if (!id) return true;
    if (state.seen.has(id)) return false;
    state.seen.add(id);
    state.seenOrder.push(id);
    if (state.seenOrder.length > LIMITS.seenIds) state.seen.delete(state.seenOrder.shift());
    return true;
  }

  function clearLive() {
    $('live-table').tBodies[0].replaceChildren();
    $('raw-table').tBodies[0].replaceChildren();
    state.seen.clear();
    state.seenOrder = [];
    state.liveCount = 0;
    state.dropped = 0;
    $('live-note').textContent = '';
    $('raw-note').textContent = '';
    $('live-count').textContent = '';
    $('live-empty').hidden = false;
  }

  function valueChips(values, derived, unresolved) {
    const chips = [];
    const d = new Set(derived || []);
    const keys = Object.keys(values || {});
    keys.sort((a, b) => (d.has(a) - d.has(b)) || 0);
    for (const k of keys) {
      chips.push(el('span', { class: d.has(k) ? 'chip derived' : 'chip', title: d.has(k) ? 'derived value' : 'value', dataset: { key: k } },
        k + ' ', el('b', {}, fmtVal(values[k]))));
    }
    for (const [k, u] of Object.entries(unresolved || {})) {
      chips.push(el('span', { class: 'chip unresolved', title: 'unresolved', dataset: { key: k } }, k + ': ' + reasonText(u)));
    }
    return chips;
  }

  function errorChips(errors) {
    if (!Array.isArray(errors)) return errors ? [el('span', { class: 'chip error' }, JSON.stringify(errors))] : [];
    return errors.map((e) => el('span', { class: 'chip error' }, errorText(e)));
  }

  function traceButton(id) {
    return el('button', { type: 'button', class: 'link', title: 'trace this message', onclick: () => lookup(id) }, 'trace');
  }

  function onLive(ev) {
    if (!remember(ev.message_id)) return;
    const invalid = ev.kind === 'invalid';
    const row = el('tr', { class: 'fresh', dataset: { messageId: ev.message_id || '', device: ev.device || '', kind: ev.kind } },
      el('td', { class: 'mono', title: 'recorded ' + fmtDateTime(ev.recorded_at) + ', seen ' + fmtDateTime(ev.seen_at) }, fmtTime(ev.recorded_at)),
      el('td', {}, ev.organization || '—'),
      el('td', { class: 'nowrap' }, el('button', { type: 'button', class: 'link', onclick: () => selectDevice(ev.device_uuid) }, ev.device || shortId(ev.device_uuid))),
      el('td', {}, ev.topic || '—'),
      el('td', {}, invalid ? errorChips(ev.errors) : valueChips(ev.values, ev.derived, ev.unresolved)),
      el('td', { class: 'nowrap' }, el('span', { class: 'state ' + (invalid ? 'invalid' : 'processed') }, invalid ? 'invalid' + (ev.reason ? ' (' + ev.reason + ')' : '') : 'processed'),
        ' · ', traceButton(ev.message_id)));
    const body = $('live-table').tBodies[0];
    body.prepend(row);
    while (body.rows.length > LIMITS.liveRows) body.deleteRow(body.rows.length - 1);
    state.liveCount++;
    $('live-count').textContent = state.liveCount + ' received';
    $('live-empty').hidden = true;
    if (state.device && ev.device_uuid === state.device.uuid) addToDevice(ev);
  }

  function onRaw(ev) {
    const row = el('tr', { class: 'fresh' + (ev.known ? '' : ' unknown'), dataset: { subject: ev.subject } },
      el('td', { class: 'mono' }, fmtTime(ev.seen_at)),
      el('td', { class: 'mono' }, ev.subject, ev.known ? '' : el('span', { class: 'state invalid', title: 'the catalog cannot place this subject' }, ' unknown')),
      el('td', { class: 'mono', title: ev.msg_id || '' }, ev.msg_id ? shortId(ev.msg_id) : '—'),
      el('td', { class: 'num' }, ev.size),
      el('td', { class: 'mono', title: ev.payload }, (ev.binary ? '(binary) ' : '') + ev.payload.slice(0, 160) + (ev.truncated || ev.payload.length > 160 ? '…' : '')));
    const body = $('raw-table').tBodies[0];
    body.prepend(row);
    while (body.rows.length > LIMITS.rawRows) body.deleteRow(body.rows.length - 1);
    if (ev.skipped_before) {
      $('raw-note').textContent = ev.skipped_before + ' messages skipped just now: the raw stream shows at most ' + (state.meta.raw_rate || '') + ' per second.';
    }
  }

  // ---- one device ---------------------------------------------------------

  async function selectDevice(uuid) {
    if (!uuid) return;
    const info = state.devByUUID.get(uuid) || { uuid, external_id: shortId(uuid), derived: {} };
    state.device = { uuid, info, series: new Map(), unresolved: new Map(), invalid: [], state: null, minutes: state.meta.history_minutes };
    $('dev-name').textContent = info.external_id;
    $('dev-meta').textContent = [info.organization, info.type, info.active === false ? 'inactive' : ''].filter(Boolean).join(' · ');
    $('dev-hint').hidden = true;
    $('dev-body').hidden = false;
    $('dev-bucket').textContent = state.meta.bucket;
    $('dev-minutes').textContent = state.device.minutes;
    $('dev-latest').replaceChildren(el('p', { class: 'hint' }, 'loading…'));
    $('dev-charts').replaceChildren();
    $('dev-unresolved').replaceChildren();
    $('dev-invalid').replaceChildren();
    try {
      const d = await api('/api/devices/' + encodeURIComponent(uuid));
      if (!state.device || state.device.uuid !== uuid) return;
      const dev = state.device;
      dev.info = d.device;
      dev.minutes = d.minutes;
      dev.state = d.state;
      dev.stateError = d.state_error;
      for (const p of d.history || []) addPoints(p.topic, p.values, Date.parse(p.recorded_at));
      const last = (d.history || []).slice().reverse();
      const topicsDone = new Set();
      for (const p of last) {
        if (topicsDone.has(p.topic)) continue;
        topicsDone.add(p.topic);
        setUnresolved(p.topic, p.unresolved, p.recorded_at);
      }
      // An invalid message whose event arrived while the device loaded is
      // kept, if the answer, read a moment earlier, does not hold it yet.
      const arrived = dev.invalid;
      dev.invalid = (d.invalid || []).map((m) => ({ id: m.message_id, at: m.received_at, reason: m.reason, errors: m.errors, status: m.status }));
      for (const m of arrived) if (!dev.invalid.some((x) => x.id === m.id)) dev.invalid.unshift(m);
      dev.invalid.length = Math.min(dev.invalid.length, LIMITS.invalid);
      renderDevice();
    } catch (e) {
      $('dev-latest').replaceChildren(el('p', { class: 'error' }, 'Cannot load the device: ' + e.message));
    }
  }

  function isDerived(topic, key) {
    const d = state.device && state.device.info && state.device.info.derived;
    return !!(d && d[topic] && d[topic].includes(key));
  }

  function addPoints(topic, values, t) {
    const dev = state.device;
    for (const [k, v] of Object.entries(values || {})) {
      if (typeof v !== 'number' || !isFinite(v)) continue;
      const id = topic + '/' + k;
      let s = dev.series.get(id);
      if (!s) {
        s = { topic, key: k, derived: isDerived(topic, k), points: [] };
        dev.series.set(id, s);
      }
      s.points.push([t, v]);
      if (s.points.length > LIMITS.points) s.points.splice(0, s.points.length - LIMITS.points);
    }
  }

  function setUnresolved(topic, unresolved, at) {
    const dev = state.device;
    for (const k of [...dev.unresolved.keys()]) if (k.startsWith(topic + '/')) dev.unresolved.delete(k);
    for (const [k, u] of Object.entries(unresolved || {})) dev.unresolved.set(topic + '/' + k, { key: k, topic, text: reasonText(u), at });
  }

  let stateRefresh = 0;
  function addToDevice(ev) {
    const dev = state.device;
    if (ev.kind === 'invalid') {
      dev.invalid.unshift({ id: ev.message_id, at: ev.seen_at, reason: ev.reason, errors: ev.errors, status: 'failed_validation' });
      dev.invalid.length = Math.min(dev.invalid.length, LIMITS.invalid);
    } else {
      addPoints(ev.topic, Object.assign({}, ev.values), Date.parse(ev.recorded_at) || Date.now());
      setUnresolved(ev.topic, ev.unresolved, ev.recorded_at);
      // The latest values come from the KV bucket: read it again shortly.
      if (!stateRefresh) stateRefresh = setTimeout(refreshState, 1500);
    }
    scheduleDeviceRender();
  }

  async function refreshState() {
    stateRefresh = 0;
    const dev = state.device;
    if (!dev) return;
    try {
      const d = await api('/api/devices/' + encodeURIComponent(dev.uuid) + '?history=0');
      if (state.device !== dev) return;
      dev.state = d.state;
      dev.stateError = d.state_error;
      scheduleDeviceRender();
    } catch (_) { /* the next event tries again */ }
  }

  let renderTimer = 0;
  function scheduleDeviceRender() {
    if (renderTimer) return;
    renderTimer = setTimeout(() => { renderTimer = 0; renderDevice(); }, 300);
  }

  function renderDevice() {
    const dev = state.device;
    if (!dev) return;
    // Latest values, from the KV bucket.
    const latest = [];
    if (dev.stateError) latest.push(el('p', { class: 'error' }, dev.stateError));
    const topics = (dev.state && dev.state.topics) || {};
    for (const topic of Object.keys(topics).sort()) {
      const ts = topics[topic];
      const derived = (dev.info.derived && dev.info.derived[topic]) || [];
      latest.push(el('div', { class: 'latest-topic', dataset: { topic } },
        el('div', { class: 'meta' }, topic + ' · recorded ' + fmtDateTime(ts.recorded_at) + ' · ', traceButton(ts.message_id)),
        valueChips(ts.values, derived, null)));
    }
    if (!latest.length) {
      latest.push(el('p', { class: 'hint' }, 'No state in the bucket for this device yet.'));
      // A state written after the page read the bucket (a publish retried,
      // a bucket rebuilt) comes with no event of the device: look again.
      if (!stateRefresh) stateRefresh = setTimeout(refreshState, 3000);
    }
    $('dev-latest').replaceChildren(...latest);

    // Charts of the last minutes.
    const now = Date.now();
    const from = now - dev.minutes * 60000;
    const charts = [];
    const series = [...dev.series.values()].sort((a, b) => (a.derived - b.derived) || a.topic.localeCompare(b.topic) || a.key.localeCompare(b.key));
    for (const s of series) {
      while (s.points.length && s.points[0][0] < from) s.points.shift();
      if (!s.points.length) continue;
      charts.push(chart(s, from, now));
    }
    if (!charts.length) charts.push(el('p', { class: 'hint' }, 'No numeric values in the last ' + dev.minutes + ' minutes.'));
    $('dev-charts').replaceChildren(...charts);

    const un = [...dev.unresolved.values()].map((u) =>
      el('li', {}, el('span', { class: 'chip unresolved' }, u.key), ' ', u.text, el('span', { class: 'hint' }, ' · ' + u.topic + ' · ' + fmtTime(u.at))));
    $('dev-unresolved').replaceChildren(...(un.length ? un : [el('li', { class: 'hint' }, 'None: every derived value resolved.')]));

    const inv = dev.invalid.map((m) => el('li', {},
      el('span', { class: 'state ' + m.status }, m.status), ' ', fmtTime(m.at), ' ', m.reason || '', ' ', traceButton(m.id),
      el('div', {}, errorChips(m.errors))));
    $('dev-invalid').replaceChildren(...(inv.length ? inv : [el('li', { class: 'hint' }, 'None in the last ' + dev.minutes + ' minutes.')]));
  }

  // chart draws one series as a small SVG line chart over [from, to].
  function chart(s, from, to) {
    const W = 300, H = 80, L = 36, R = 6, T = 6, B = 14;
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of s.points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (hi === lo) { hi += 1; lo -= 1; }
    const x = (t) => L + ((t - from) / (to - from)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': s.key });
    g.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
    g.append(svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
    const label = (text, attrs) => { const t = svg('text', attrs); t.textContent = text; return t; };
    g.append(label(fmtNum(hi), { x: L - 3, y: T + 7, 'text-anchor': 'end' }));
    g.append(label(fmtNum(lo), { x: L - 3, y: H - B, 'text-anchor': 'end' }));
    g.append(label('-' + Math.round((to - from) / 60000) + ' min', { x: L, y: H - 2 }));
    g.append(label('now', { x: W - R, y: H - 2, 'text-anchor': 'end' }));
    const pts = s.points.map(([t, v]) => x(t).toFixed(1) + ',' + y(v).toFixed(1)).join(' ');
    g.append(svg('polyline', { class: s.derived ? 'line derived' : 'line', points: pts }));
    const [lt, lv] = s.points[s.points.length - 1];
    g.append(svg('circle', { class: s.derived ? 'dot derived' : 'dot', cx: x(lt).toFixed(1), cy: y(lv).toFixed(1), r: 2.5 }));
    return el('div', { class: 'chart', dataset: { key: s.key, topic: s.topic, derived: s.derived ? 'true' : 'false' } },
      el('div', { class: 'title' },
        el('span', {}, s.key, s.derived ? el('span', { class: 'tag' }, ' derived') : '', el('span', { class: 'hint' }, ' · ' + s.topic)),
        el('b', {}, fmtNum(lv))),
      g);
  }

  // ---- health -------------------------------------------------------------

  async function loadHealth() {
    try {
      state.health = await api('/api/health');
      renderHealth(false);
    } catch (e) {
      $('h-errors').textContent = 'Cannot read the health panel: ' + e.message;
    }
  }

  // changed reports whether a part of the panel differs from what is shown,
  // so that a refresh rebuilds only what changed.
  function changed(part, value, force) {
    const json = JSON.stringify(value === undefined ? null : value);
    if (!force && state.rendered[part] === json) return false;
    state.rendered[part] = json;
    return true;
  }

  function renderHealth(force) {
    const h = state.health;
    if (!h) return;
    const r5 = h.rate_5m || { percent: 0, badge: 'Stable', failed: 0, messages: 0 };
    const r60 = h.rate_1h || { percent: 0, badge: 'Stable', failed: 0, messages: 0 };
    // While the global switch is off the badge says Paused: a pause on
    // purpose is neither a failure rate nor a fault.
    const badge = h.badge || r5.badge;
    for (const b of [$('badge'), $('h-badge')]) {
      b.textContent = badge + (b.id === 'badge' && !h.pause ? ' · ' + fmtPct(r5.percent) : '');
      b.className = 'badge ' + badgeClass(badge) + (b.id === 'h-badge' ? ' big' : '');
      b.dataset.badge = badge;
    }
    const p = h.pause;
    $('h-pause').hidden = !p;
    $('h-pause').textContent = p ? 'Paused since ' + fmtDateTime(p.since) + (p.by ? ' by ' + p.by : '') + ': the global pipeline switch is off; ' +
      p.backlog + (p.backlog === 1 ? ' message waits' : ' messages wait') + ' in the stream and will be taken when it is switched back on.' : '';
    $('badge').title = p ? 'pipeline paused since ' + fmtDateTime(p.since) + (p.by ? ' by ' + p.by : '') : 'failure rate of the last 5 minutes';
    $('h-rate5').textContent = fmtPct(r5.percent) + ' (' + r5.failed + ' of ' + r5.messages + ')';
    $('h-rate60').textContent = fmtPct(r60.percent) + ' (' + r60.failed + ' of ' + r60.messages + ')';
    $('h-slow-at').textContent = h.slow_at ? 'one-hour figures as of ' + fmtTime(h.slow_at) : '';

    if (changed('backlog', h.backlog, force)) {
      const b = h.backlog;
      const body = $('h-backlog-body');
      if (!b) {
        body.replaceChildren(el('p', { class: 'error' }, (h.errors && h.errors.backlog) || 'unknown'));
      } else {
        body.replaceChildren(el('dl', { class: 'kv' },
          el('dt', {}, 'backlog'), el('dd', { class: 'big', id: 'h-backlog-total', dataset: { total: b.total } }, String(b.total)),
          el('dt', {}, 'not delivered yet'), el('dd', {}, String(b.pending)),
          el('dt', {}, 'delivered, not finished'), el('dd', {}, String(b.ack_pending)),
          el('dt', {}, 'redelivered'), el('dd', {}, String(b.redelivered)),
          el('dt', {}, 'waiting pulls'), el('dd', {}, String(b.waiting_pulls)),
          el('dt', {}, 'stream ' + b.stream), el('dd', {}, b.stream_messages + ' messages'),
          el('dt', {}, 'consumer'), el('dd', {}, b.consumer)));
      }
    }

    if (changed('stages', [h.stages, h.stage_health], force)) {
      const grpc = new Map((h.stage_health || []).map((s) => [s.stage, s.status]));
      for (const th of document.querySelectorAll('#h-stages .grpc')) th.hidden = !grpc.size;
      $('h-stages').tBodies[0].replaceChildren(...(h.stages || []).map((s) => el('tr', { dataset: { stage: s.stage } },
        el('td', {}, s.stage),
        el('td', { class: 'num' }, s.count),
        el('td', { class: 'num' }, s.per_second.toFixed(2)),
        el('td', { class: 'num' }, s.failed),
        el('td', { class: 'num' }, fmtDur(s.p50_us)),
        el('td', { class: 'num' }, fmtDur(s.p99_us)),
        grpc.size ? el('td', {}, el('span', { class: 'state ' + (grpc.get(stageService(s.stage)) === 'SERVING' ? 'processed' : 'failed') }, grpc.get(stageService(s.stage)) || '—')) : null)));
    }

    const failRows = (list) => (list && list.length ? list.map((f) => el('tr', {},
      el('td', {}, f.stage), el('td', {}, el('span', { class: 'state ' + f.status }, f.status)),
      el('td', { dataset: { code: f.code } }, el('b', { class: 'mono' }, f.code), f.example ? el('div', { class: 'hint', title: f.example }, 'e.g. ' + f.example) : null),
      el('td', { class: 'num' }, f.count)))
      : [el('tr', {}, el('td', { colspan: 4, class: 'hint' }, 'No failures.'))]);
    if (changed('fail5', h.failures_5m, force)) $('h-fail5').tBodies[0].replaceChildren(...failRows(h.failures_5m));
    if (changed('fail60', h.failures_1h, force)) $('h-fail60').tBodies[0].replaceChildren(...failRows(h.failures_1h));

    const pf = h.publish_failed || { total: 0, latest: [] };
    $('h-pf-total').textContent = pf.total + (pf.total === 1 ? ' row' : ' rows');
    $('retry-all').disabled = !pf.total;
    if (changed('pf', [pf.latest, [...state.retrying]], force)) {
      const ids = new Set((pf.latest || []).map((p) => p.message_id));
      for (const id of [...state.retrying]) if (!ids.has(id)) state.retrying.delete(id);
      $('h-pf').tBodies[0].replaceChildren(...((pf.latest || []).length ? pf.latest.map((p) => el('tr', { class: state.retrying.has(p.message_id) ? 'retrying' : '', dataset: { messageId: p.message_id } },
        el('td', { class: 'mono' }, fmtTime(p.updated_at)),
        el('td', {}, (p.organization ? p.organization + ' / ' : '') + p.device),
        el('td', {}, p.topic),
        el('td', {}, p.reason),
        el('td', { class: 'num' }, p.attempts),
        el('td', { class: 'mono' }, traceButton(p.message_id)),
        el('td', {}, el('button', { type: 'button', class: 'small retry', dataset: { id: p.message_id }, disabled: state.retrying.has(p.message_id), onclick: () => retry([p.message_id]) },
          state.retrying.has(p.message_id) ? 'Retrying…' : 'Retry'))))
        : [el('tr', {}, el('td', { colspan: 7, class: 'hint' }, 'No publish_failed rows.'))]));
    }

    $('h-parked').textContent = h.parked ? h.parked + ' messages parked' : '';
    if (changed('switches', h.switches, force)) renderSwitches(h.switches || []);
    const errs = Object.entries(h.errors || {}).map(([k, v]) => k + ': ' + v);
    $('h-errors').textContent = errs.join(' · ');
  }

  function renderSwitches(rows) {
    const names = state.meta.switch_names;
    const table = $('h-switches');
    table.tHead.replaceChildren(el('tr', {}, el('th', {}, 'Scope'), ...names.map((n) => el('th', {}, n)), el('th', {}, 'Changed')));
    const field = { 'pipeline.enabled': 'pipeline_enabled', publish_analytics: 'publish_analytics', publish_invalid_events: 'publish_invalid_events' };
    table.tBodies[0].replaceChildren(...rows.map((r) => {
      const scope = r.organization_id ? r.organization : '';
      return el('tr', { dataset: { scope: scope || 'global' } },
        el('td', {}, scope ? el('span', {}, scope) : el('b', {}, 'global')),
        ...names.map((n) => {
          const on = !!(r.switches || {})[field[n]];
          const eff = !!(r.effective || {})[field[n]];
          return el('td', {},
            el('button', { type: 'button', class: 'toggle ' + (on ? 'on' : 'off'), dataset: { scope: scope || 'global', switch: n, on: String(on) },
              title: 'click to turn ' + (on ? 'off' : 'on'), onclick: () => toggle(scope, n, !on) }, on ? 'on' : 'off'),
            on !== eff ? el('span', { class: 'hint' }, ' in effect: ' + (eff ? 'on' : 'off')) : null);
        }),
        el('td', { class: 'hint' }, r.updated_at ? fmtDateTime(r.updated_at) + (r.updated_by ? ' by ' + r.updated_by : '') : 'all on (no row)'));
    }));
  }

  async function toggle(scope, name, on) {
    const where = scope ? 'for organization ' + scope : 'globally';
    let what = '';
    if (name === 'pipeline.enabled') {
      what = on ? (scope ? ' Its parked messages resume.' : ' The gateway resumes consuming and drains the backlog.')
        : (scope ? ' Its messages are parked (kept) until switched back.' : ' The gateway pauses consuming; the stream keeps the backlog.');
    }
    if (!(await confirmDialog('Turn ' + name + ' ' + (on ? 'ON' : 'OFF') + ' ' + where + '?' + what, on ? 'Turn on' : 'Turn off'))) return;
    const res = await withToken(() => api('/api/switches', { method: 'POST', auth: true, body: { organization: scope, switch: name, on } }));
    if (!res) return;
    toast(name + ' is ' + (on ? 'on' : 'off') + ' ' + where + '.');
    if (state.health) {
      state.health.switches = res.switches;
      renderHealth(false);
    }
  }

  async function retry(ids) {
    const body = ids ? { message_ids: ids } : { all: true };
    const res = await withToken(() => api('/api/publish-failed/retry', { method: 'POST', auth: true, body }));
    if (!res) return;
    for (const id of ids || []) state.retrying.add(id);
    toast('Retry asked for ' + res.rows + ' row' + (res.rows === 1 ? '' : 's') + '; the publisher takes them on its next pass.');
    renderHealth(false);
  }

  // ---- message lookup -----------------------------------------------------

  async function lookup(ref) {
    ref = (ref || '').trim();
    if (!ref) return;
    showTab('lookup');
    $('lookup-ref').value = ref;
    const out = $('lookup-result');
    out.replaceChildren(el('p', { class: 'hint' }, 'looking up…'));
    try {
      const r = await api('/api/trace?ref=' + encodeURIComponent(ref));
      out.replaceChildren(...renderTrace(r));
    } catch (e) {
      out.replaceChildren(el('p', { class: 'error', id: 'lookup-error' }, e.status === 404 ? 'No message matches "' + ref + '".' : e.message));
    }
  }

  function pre(v) { return el('pre', {}, typeof v === 'string' ? v : JSON.stringify(v, null, 2)); }

  function renderTrace(r) {
    const t = r.trace;
    const m = t.message;
    const parts = [];
    const row = (k, v) => [el('dt', {}, k), el('dd', {}, v)];
    parts.push(el('div', { class: 'panel', id: 'trace-summary', dataset: { messageId: m.id, status: m.status } },
      el('h2', {}, 'Message ', el('span', { class: 'mono' }, m.id), ' ', el('span', { class: 'state ' + m.status }, m.status)),
      el('dl', { class: 'kv' },
        row('subject', m.subject),
        row('dedupe key', el('span', { class: 'mono' }, m.dedupe_key)),
        row('device message id', m.source_message_id || '—'),
        row('organization', r.organization || m.organization_id || '—'),
        row('device', r.device || m.device_id || '—'),
        row('halted at', m.halted_stage || '—'),
        row('reason', m.reason || '—'),
        row('deliveries', String(m.delivery_attempts)),
        row('received', fmtDateTime(m.received_at)),
        row('processed', fmtDateTime(m.processed_at)),
        row('trace id', m.trace_id ? el('span', { class: 'mono', id: 'trace-id' }, m.trace_id) : '—')),
      (t.other_matches || []).length ? el('p', { class: 'hint' }, 'Other messages with this id: ', ...t.other_matches.map((id) => el('button', { type: 'button', class: 'link', onclick: () => lookup(id) }, shortId(id) + ' '))) : null));

    const byStage = new Map();
    for (const l of t.stage_logs || []) {
      if (!byStage.has(l.stage)) byStage.set(l.stage, []);
      byStage.get(l.stage).push(l);
    }
    const cards = (r.chain || state.meta.stages || []).map((stage) => {
      const entries = byStage.get(stage) || [];
      const last = entries[entries.length - 1];
      return el('div', { class: 'stage-card' + (entries.length ? '' : ' missing'), dataset: { stage, status: last ? last.status : 'none' } },
        el('h4', {}, stage, ' ', last ? el('span', { class: 'state ' + last.status }, last.status) : el('span', { class: 'hint' }, 'no entry')),
        ...entries.map((l) => el('div', { class: 'entry' },
          el('div', {}, el('span', { class: 'state ' + l.status }, l.status), ' · ', fmtDur(l.duration_us), ' · attempt ', String(l.attempt)),
          el('div', { class: 'hint' }, fmtTime(l.created_at), ' · ', l.instance),
          l.errors ? pre(l.errors) : null)));
    });
    parts.push(el('div', { class: 'panel' }, el('h2', {}, 'Stages'), el('div', { class: 'timeline', id: 'trace-stages' }, ...cards)));

    if (t.telemetry) {
      const tel = t.telemetry;
      parts.push(el('div', { class: 'panel', id: 'trace-telemetry' },
        el('h2', {}, 'Telemetry row ', el('span', { class: 'state ' + tel.processing_state }, tel.processing_state)),
        el('dl', { class: 'kv' },
          row('topic', tel.topic),
          row('recorded', fmtDateTime(tel.recorded_at)),
          row('validation', tel.validation_status),
          row('publish attempts', String(tel.publish_attempts)),
          row('failure reason', tel.failure_reason || '—'),
          row('processed', fmtDateTime(tel.processed_at))),
        el('h3', {}, 'Values (mutated and derived)'), el('div', {}, valueChips(tel.transformed_values, derivedOf(tel), tel.unresolved_values)),
        (tel.validation_errors || []).length ? el('div', {}, el('h3', {}, 'Validation errors'), errorChips(tel.validation_errors)) : null));
    }
    return parts;
  }

  // derivedOf names the keys a trace's telemetry row computed rather than
  // read: those in the transformed values and not the mutated ones.
  function derivedOf(tel) {
    const mutated = tel.mutated_values || {};
    return Object.keys(tel.transformed_values || {}).filter((k) => !(k in mutated));
  }

  // ---- start --------------------------------------------------------------

  async function start() {
    renderAuth();
    for (const b of document.querySelectorAll('#tabs button')) {
      b.addEventListener('click', () => { location.hash = b.dataset.tab; showTab(b.dataset.tab); });
    }
    $('badge').addEventListener('click', () => { location.hash = 'health'; showTab('health'); });
    $('auth-btn').addEventListener('click', async () => {
      if (state.token) {
        forgetToken();
        toast('Token forgotten: this tab is read-only again.');
      } else {
        await askToken();
      }
    });
    for (const id of ['f-org', 'f-device', 'f-topic', 'f-raw']) {
      $(id).addEventListener('change', () => {
        if (id === 'f-org') fillDevices();
        onFilterChange();
      });
    }
    $('retry-all').addEventListener('click', () => retry(null));
    $('lookup-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const ref = $('lookup-ref').value.trim();
      if (ref) {
        history.replaceState(null, '', '#lookup=' + encodeURIComponent(ref));
        lookup(ref);
      }
    });
    window.addEventListener('hashchange', route);
    // Re-draw the charts now and then, so they slide with time even when
    // the device is quiet.
    setInterval(() => { if (state.device && !document.hidden) scheduleDeviceRender(); }, 10000);

    try {
      Object.assign(state.meta, await api('/api/meta'));
    } catch (e) {
      toast('Cannot reach the viewer: ' + e.message, true);
    }
    renderAuth();
    connect(false);
    loadCatalog();
    loadHealth();
    route();
  }

  start();
})();
