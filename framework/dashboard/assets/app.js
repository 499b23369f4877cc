// The dashboard: hash-routed views over the REST API, refreshed every two
// seconds. Everything the API returns is put into the page as text
// (textContent), never as markup.

import { APIError, call, getToken, setToken, vdiskPath } from './api.js';
import * as fmt from './format.js';

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

// --- small DOM helpers

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function setText(id, text) {
  const e = $(id);
  if (e.textContent !== text) e.textContent = text;
}

// syncRows updates tbody to one row per item, keyed by key(item): rows are
// kept (so a click or a selection survives a refresh), updated in place,
// added and removed. cells(item) gives the cells' texts, or nodes.
function syncRows(tbody, items, key, cells, attr) {
  const old = new Map();
  for (const tr of tbody.rows) old.set(tr.getAttribute(attr), tr);
  let at = 0;
  for (const item of items) {
    const k = key(item);
    let tr = old.get(k);
    const values = cells(item);
    if (!tr) {
      tr = el('tr', { [attr]: k });
      for (let i = 0; i < values.length; i++) tr.append(el('td'));
    }
    old.delete(k);
    values.forEach((v, i) => {
      const td = tr.cells[i];
      if (v instanceof Node) {
        if (!td.firstChild || !td.firstChild.isEqualNode(v)) td.replaceChildren(v);
      } else {
        const cls = v && typeof v === 'object' ? v.class || '' : '';
        const text = v && typeof v === 'object' ? v.text : String(v);
        if (td.textContent !== text) td.textContent = text;
        if (td.className !== cls) td.className = cls;
      }
    });
    if (tbody.rows[at] !== tr) tbody.insertBefore(tr, tbody.rows[at] || null);
    at++;
  }
  for (const tr of old.values()) tr.remove();
}

const num = (text) => ({ text, class: 'num' });
const state = (text) => ({ text: text || fmt.DASH, class: 'state ' + stateClass(text) });

function stateClass(s) {
  s = (s || '').toLowerCase();
  if (s === 'ok' || s === 'up' || s === 'active' || s === 'in_sync' || s === 'sync') return 'good';
  if (s.startsWith('failed') || s === 'down' || s === 'error' || s === 'fenced') return 'bad';
  if (s === '') return '';
  return 'warn';
}

// --- messages and the live indicator

let messageTimer;
function message(text, kind = 'info') {
  const m = $('message');
  m.textContent = text;
  m.className = kind;
  m.hidden = false;
  clearTimeout(messageTimer);
  if (kind !== 'error') messageTimer = setTimeout(() => { m.hidden = true; }, 6000);
}
$('message').addEventListener('click', () => { $('message').hidden = true; });

function live(ok, text) {
  const e = $('live');
  e.textContent = text;
  e.className = 'live ' + (ok ? 'good' : 'bad');
}

// --- the dialog: confirmations, names, the token

// ask shows the dialog and resolves to null (cancelled) or {value, force}.
function ask({ title, message: msg, input, force, ok = 'OK', danger = false }) {
  const d = $('dialog');
  $('dlg-title').textContent = title;
  $('dlg-message').textContent = msg || '';
  $('dlg-input-label').hidden = !input;
  const inp = $('dlg-input');
  if (input) {
    $('dlg-input-text').textContent = input.label;
    inp.type = input.type || 'text';
    inp.value = input.value || '';
    inp.required = !!input.required;
  } else {
    inp.required = false;
  }
  $('dlg-force-label').hidden = !force;
  $('dlg-force').checked = false;
  if (force) $('dlg-force-text').textContent = force;
  const okb = $('dlg-ok');
  okb.textContent = ok;
  okb.className = danger ? 'danger' : '';
  return new Promise((resolve) => {
    const form = $('dlg-form');
    const done = (result) => {
      form.removeEventListener('submit', onSubmit);
      $('dlg-cancel').removeEventListener('click', onCancel);
      d.removeEventListener('cancel', onCancel);
      if (d.open) d.close();
      resolve(result);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      done({ value: inp.value.trim(), force: $('dlg-force').checked });
    };
    const onCancel = (ev) => {
      ev.preventDefault();
      done(null);
    };
    form.addEventListener('submit', onSubmit);
    $('dlg-cancel').addEventListener('click', onCancel);
    d.addEventListener('cancel', onCancel);
    d.showModal();
    (input ? inp : okb).focus();
  });
}

async function askToken(why) {
  const r = await ask({
    title: 'API token',
    message: why + ' `ovs token create` makes a token for vdisk actions; the cluster admin token ' +
      '(`ovs backend token`) also opens the backend view. The page keeps it in this tab only.',
    input: { label: 'Token', type: 'password', value: '' },
    ok: 'Use token',
  });
  if (r === null) return false;
  setToken(r.value);
  updateTokenButton();
  return r.value !== '';
}

function updateTokenButton() {
  $('token-button').textContent = getToken() ? 'Token set ✓' : 'Set token';
}

$('token-button').addEventListener('click', async () => {
  await askToken('Paste an API token.');
  refresh();
});

// mutate runs a changing call; on 401 it asks for a token and tries once
// more.
async function mutate(what, fn) {
  try {
    const r = await fn();
    refresh();
    return r;
  } catch (err) {
    if (err instanceof APIError && err.status === 401) {
      const why = getToken() ? 'The API refused the token this page has.' : 'This action needs an API token.';
      if (await askToken(why)) {
        try {
          const r = await fn();
          refresh();
          return r;
        } catch (err2) {
          message(what + ' failed: ' + err2.message, 'error');
          return undefined;
        }
      }
    }
    message(what + ' failed: ' + err.message, 'error');
    return undefined;
  }
}

// --- stats: live IOPS from two samples of GET /api/v1/stats

const stats = { available: false, prev: null, rates: {} };

async function loadStats() {
  let cur;
  try {
    cur = await call('GET', '/api/v1/stats');
  } catch (err) {
    if (err instanceof APIError && err.status === 404) {
      stats.available = false;
      stats.prev = null;
      stats.rates = {};
      return;
    }
    throw err;
  }
  stats.available = true;
  if (stats.prev && stats.prev.time === cur.time) return; // no new sample
  stats.rates = fmt.rates(stats.prev, cur);
  stats.prev = cur;
}

function iops(name) {
  const r = stats.rates[name];
  if (!r) return fmt.DASH;
  return fmt.rate(r.read_ops) + ' / ' + fmt.rate(r.write_ops);
}

// --- views

async function showOverview() {
  const [nodes, vdisks, cap, health] = await Promise.all([
    call('GET', '/api/v1/nodes').catch(notFoundAs(null)),
    call('GET', '/api/v1/vdisks'),
    call('GET', '/api/v1/capacity').catch(notFoundAs(null)),
    call('GET', '/api/v1/health/checks').catch(notFoundAs(null)),
    loadStats(),
  ]);
  if (nodes) {
    const up = nodes.filter((n) => n.state === 'up').length;
    setText('ov-nodes', `${up} / ${nodes.length}`);
    setText('ov-nodes-detail', nodes.map((n) => `${n.id} (${n.state})`).join(', '));
  } else {
    setText('ov-nodes', fmt.DASH);
    setText('ov-nodes-detail', 'not a cluster');
  }
  setText('ov-vdisks', fmt.count(vdisks.length));
  const provisioned = vdisks.reduce((s, v) => s + (v.size || 0), 0);
  setText('ov-provisioned', fmt.size(provisioned) + ' provisioned');
  if (cap) {
    setText('ov-free', fmt.size(cap.free_bytes));
    const used = cap.total_bytes - cap.free_bytes;
    $('ov-meter').value = cap.total_bytes > 0 ? used / cap.total_bytes : 0;
    setText('ov-capacity', `${fmt.size(used)} used of ${fmt.size(cap.total_bytes)} (${cap.backend}, ` +
      `${Math.round((cap.efficiency || 1) * 100)}% efficiency; raw ${fmt.size(cap.raw_free_bytes)} free of ${fmt.size(cap.raw_total_bytes)})`);
  } else {
    setText('ov-free', fmt.DASH);
    setText('ov-capacity', 'not reported by this node');
  }
  if (stats.available) {
    let r = 0, w = 0, rb = 0, wb = 0, any = false;
    for (const x of Object.values(stats.rates)) {
      any = true;
      r += x.read_ops; w += x.write_ops; rb += x.read_bytes; wb += x.write_bytes;
    }
    setText('ov-iops', any ? fmt.rate(r) + ' / ' + fmt.rate(w) : fmt.DASH);
    setText('ov-bw', any ? `${fmt.size(Math.round(rb))}/s read, ${fmt.size(Math.round(wb))}/s written` : '');
  } else {
    setText('ov-iops', fmt.DASH);
    setText('ov-bw', 'no statistics on this node');
  }
  showHealth(health);
}

function showHealth(h) {
  const tbody = $('health-table').tBodies[0];
  if (!h) {
    setText('ov-health', fmt.DASH);
    setText('ov-health-detail', '');
    setText('health-note', 'This node does not serve health checks.');
    $('health-table').hidden = true;
    return;
  }
  const overall = h.status || h.worst || h.overall || '';
  setText('ov-health', overall || fmt.DASH);
  $('ov-health').className = 'big ' + stateClass(overall);
  const checks = Array.isArray(h.checks) ? h.checks : Array.isArray(h.results) ? h.results : [];
  const bad = checks.filter((c) => (c.status || '') !== 'ok').length;
  setText('ov-health-detail', `${checks.length} checks, ${bad} not ok`);
  setText('health-note', '');
  $('health-table').hidden = false;
  syncRows(tbody, checks, (c) => String(c.name), (c) => [
    String(c.name), state(String(c.status || '')), String(c.message || c.msg || ''),
  ], 'data-check');
}

async function showNodes() {
  let nodes;
  try {
    nodes = await call('GET', '/api/v1/nodes');
    setText('nodes-note', '');
  } catch (err) {
    if (!(err instanceof APIError) || err.status !== 404) throw err;
    nodes = [];
    setText('nodes-note', 'This server is not part of a cluster.');
  }
  syncRows($('node-table').tBodies[0], nodes, (n) => n.id, (n) => [
    n.id, n.site || fmt.DASH, state(n.state), n.api || fmt.DASH, n.nbd || fmt.DASH, n.iscsi || fmt.DASH,
    n.dtl || fmt.DASH, num(String((n.asds || []).length)), num(fmt.count(n.vdisks)), fmt.time(n.last_seen),
  ], 'data-node');
}

function vdiskLink(name) {
  return el('a', { href: '#/vdisk/' + encodeURIComponent(name), text: name });
}

async function showVDisks() {
  const [vdisks] = await Promise.all([call('GET', '/api/v1/vdisks'), loadStats()]);
  $('vdisks-empty').hidden = vdisks.length > 0;
  syncRows($('vdisk-table').tBodies[0], vdisks, (v) => v.name, (v) => [
    vdiskLink(v.name), num(fmt.size(v.size)), num(fmt.size(v.written_bytes)), num(fmt.size(v.stored_bytes)),
    v.owner || fmt.DASH, num(iops(v.name)), num(fmt.count(v.snapshots)), num(fmt.count(v.clients)),
    state(v.state + (v.template ? ' (template)' : '')),
  ], 'data-name');
}

let current = { view: 'overview', vdisk: '' };

async function showVDisk() {
  const name = current.vdisk;
  let info, snaps;
  try {
    [info, snaps] = await Promise.all([
      call('GET', vdiskPath(name)),
      call('GET', vdiskPath(name) + '/snapshots'),
      loadStats(),
    ]);
  } catch (err) {
    if (err instanceof APIError && err.status === 404) {
      setText('vd-name', name + ' (gone)');
      $('vd-info').replaceChildren();
      syncRows($('snap-table').tBodies[0], [], () => '', () => [], 'data-snapshot');
      return;
    }
    throw err;
  }
  setText('vd-name', name);
  const rows = [
    ['Size', fmt.size(info.size)],
    ['State', info.state || fmt.DASH],
    ['Owner', info.owner ? `${info.owner} (epoch ${info.owner_epoch || 0})` : fmt.DASH],
    ['IOPS read / write', iops(name)],
    ['Written', fmt.size(info.written_bytes)],
    ['Stored', fmt.size(info.stored_bytes)],
    ['Garbage', fmt.size(info.garbage_bytes)],
    ['Pending upload', fmt.size(info.pending_upload_bytes)],
    ['Write buffer', fmt.size(info.write_buffer_bytes)],
    ['Cluster / SCO size', `${fmt.size(info.cluster_size)} / ${fmt.size(info.sco_size)}`],
    ['Clients', fmt.count(info.clients)],
    ['DTL', info.dtl_mode ? `${info.dtl_mode}, ${info.dtl_state || fmt.DASH}${info.dtl_node ? ' on ' + info.dtl_node : ''}` : fmt.DASH],
    ['Template', info.template ? 'yes' : 'no'],
    ['Parent', info.parent || fmt.DASH],
    ['Created', fmt.time(info.created_at)],
    ['ID', info.id || fmt.DASH],
  ];
  const dl = $('vd-info');
  const want = rows.map(([k, v]) => k + '\u0000' + v).join('\u0001');
  if (dl.dataset.shown !== want) {
    dl.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
    dl.dataset.shown = want;
  }
  $('snaps-empty').hidden = snaps.length > 0;
  syncRows($('snap-table').tBodies[0], snaps, (s) => s.name, (s) => [
    s.name, fmt.time(s.created_at), num(fmt.size(s.written_bytes)), s.synced ? 'yes' : 'not yet',
    s.metadata || '', snapshotActions(s.name),
  ], 'data-snapshot');
}

// The buttons carry only the snapshot name; a click handler on the table
// does the work, so rows can be refreshed under the pointer.
function snapshotActions(snap) {
  const span = el('span', { class: 'row-actions' });
  for (const [act, label] of [['clone', 'Clone…'], ['rollback', 'Rollback…'], ['delete', 'Delete…']]) {
    span.append(el('button', { type: 'button', text: label, 'data-act': act, 'data-snap': snap,
      class: act === 'clone' ? '' : 'danger' }));
  }
  return span;
}

// Backend status and ASDs come from the backend admin API, which takes
// only the cluster's admin token, also for reading.
async function showBackend() {
  let status, asds;
  try {
    [status, asds] = await Promise.all([
      call('GET', '/api/v1/backend/status'),
      call('GET', '/api/v1/backend/asds'),
    ]);
  } catch (err) {
    if (err instanceof APIError && (err.status === 401 || err.status === 404)) {
      setText('backend-note', err.status === 404
        ? 'This node has no erasure-coded backend (a local directory holds the data).'
        : 'The backend view needs the cluster admin token: run `ovs backend token` and paste it with "Set token".');
      $('backend-cards').hidden = true;
      syncRows($('asd-table').tBodies[0], [], () => '', () => [], 'data-asd');
      return;
    }
    throw err;
  }
  setText('backend-note', '');
  $('backend-cards').hidden = false;
  setText('be-asds', `${status.asds_up} / ${status.asds}`);
  setText('be-objects', fmt.count(status.objects));
  setText('be-bytes', `${fmt.size(status.bytes)} data in ${fmt.size(status.stored_bytes)} of fragments`);
  setText('be-degraded', `${fmt.count(status.degraded_objects)} / ${fmt.count(status.unavailable_objects)}`);
  $('be-degraded').className = 'big ' + (status.unavailable_objects > 0 ? 'bad' : status.degraded_objects > 0 ? 'warn' : 'good');
  setText('be-free', fmt.size(status.free));
  setText('be-space', `${fmt.size(status.used)} used of ${fmt.size(status.capacity)}`);
  setText('be-preset', status.default_preset || fmt.DASH);
  // The API lists ASDs in no fixed order; a stable one keeps rows still.
  const sorted = (asds || []).slice().sort((x, y) =>
    (x.node || '').localeCompare(y.node || '') || (x.addr || '').localeCompare(y.addr || '', 'en', { numeric: true }) ||
    x.id.localeCompare(y.id));
  syncRows($('asd-table').tBodies[0], sorted, (a) => a.id, (a) => [
    a.id, a.node || fmt.DASH, a.site || fmt.DASH, a.addr || fmt.DASH, state(a.state),
    state(a.health + (a.error ? ': ' + a.error : '')), num(fmt.size(a.used)), num(fmt.size(a.capacity)),
    num(fmt.count(a.fragments)), fmt.time(a.last_seen),
  ], 'data-asd');
}

function notFoundAs(value) {
  return (err) => {
    if (err instanceof APIError && err.status === 404) return value;
    throw err;
  };
}

const VIEWS = {
  overview: showOverview,
  nodes: showNodes,
  vdisks: showVDisks,
  vdisk: showVDisk,
  backend: showBackend,
};

// --- routing and polling

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const view = parts[0] in VIEWS ? parts[0] : 'overview';
  let vdisk = '';
  if (view === 'vdisk') {
    try {
      vdisk = decodeURIComponent(parts.slice(1).join('/'));
    } catch {
      vdisk = '';
    }
    if (!vdisk) return { view: 'vdisks', vdisk: '' };
  }
  return { view, vdisk };
}

let generation = 0;
let timer;

async function tick(gen) {
  if (!document.hidden) {
    try {
      await VIEWS[current.view]();
      if (gen === generation) live(true, 'live · ' + new Date().toLocaleTimeString());
    } catch (err) {
      if (gen === generation) {
        if (err instanceof APIError && err.status === 401 && getToken()) {
          // A token that is sent is always checked: a stale one blocks
          // even reading, so forget it.
          setToken('');
          updateTokenButton();
          message('The API refused the token (' + err.message + '); it was forgotten.', 'error');
        }
        live(false, 'error: ' + err.message);
      }
    }
  }
  if (gen === generation) timer = setTimeout(() => tick(gen), POLL_MS);
}

// refresh shows the current view now and restarts the polling.
function refresh() {
  generation++;
  clearTimeout(timer);
  tick(generation);
}

function route() {
  current = parseHash();
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== 'view-' + current.view;
  const nav = current.view === 'vdisk' ? 'vdisks' : current.view;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === nav);
  document.title = 'OVS · ' + (current.view === 'vdisk' ? current.vdisk : current.view);
  refresh();
}

// --- actions

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = $('create-name').value.trim();
  const body = { name, size: $('create-size').value.trim() };
  if ($('create-cluster').value) body.cluster_size = $('create-cluster').value;
  const made = await mutate('Creating ' + name, () => call('POST', '/api/v1/vdisks', body));
  if (made) {
    $('create-form').reset();
    message(`Created vdisk ${made.name} (${fmt.size(made.size)}).`);
  }
});

$('resize-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = current.vdisk;
  const size = $('resize-size').value.trim();
  const info = await mutate('Resizing ' + name, () => call('POST', vdiskPath(name) + '/resize', { size }));
  if (info) {
    $('resize-form').reset();
    message(`Resized ${name} to ${fmt.size(info.size)}.`);
  }
});

$('snap-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = current.vdisk;
  const snap = $('snap-name').value.trim();
  const made = await mutate('Snapshot of ' + name,
    () => call('POST', vdiskPath(name) + '/snapshots', snap ? { name: snap } : {}));
  if (made) {
    $('snap-form').reset();
    message(`Snapshot ${made.name} of ${name} taken.`);
  }
});

$('vd-delete').addEventListener('click', async () => {
  const name = current.vdisk;
  const r = await ask({
    title: 'Delete vdisk ' + name + '?',
    message: 'Its data and all its snapshots are deleted from the backend. This cannot be undone.',
    force: 'Delete even if a client has it open',
    ok: 'Delete', danger: true,
  });
  if (!r) return;
  const done = await mutate('Deleting ' + name,
    () => call('DELETE', vdiskPath(name) + (r.force ? '?force=true' : '')).then(() => true));
  if (done) {
    message(`Deleted vdisk ${name}.`);
    location.hash = '#/vdisks';
  }
});

$('snap-table').addEventListener('click', async (ev) => {
  const b = ev.target.closest('button[data-act]');
  if (!b) return;
  const name = current.vdisk;
  const snap = b.getAttribute('data-snap');
  switch (b.getAttribute('data-act')) {
    case 'clone': {
      const r = await ask({
        title: `Clone ${name}@${snap}`,
        message: 'The clone is a new vdisk that starts with the snapshot\'s data.',
        input: { label: 'New vdisk name', value: name + '-clone', required: true },
        ok: 'Clone',
      });
      if (!r || !r.value) return;
      const made = await mutate('Cloning ' + snap,
        () => call('POST', vdiskPath(name) + '/clones', { name: r.value, snapshot: snap }));
      if (made) {
        message(`Cloned ${name}@${snap} as ${made.name}.`);
        location.hash = '#/vdisk/' + encodeURIComponent(made.name);
      }
      break;
    }
    case 'rollback': {
      const r = await ask({
        title: `Roll ${name} back to ${snap}?`,
        message: 'Every write since the snapshot, and every later snapshot, is discarded.',
        force: 'Roll back even if a client has it open (it sees its data change)',
        ok: 'Roll back', danger: true,
      });
      if (!r) return;
      const done = await mutate('Rolling back ' + name,
        () => call('POST', vdiskPath(name) + '/rollback', { snapshot: snap, force: r.force }));
      if (done) message(`Rolled ${name} back to ${snap}.`);
      break;
    }
    case 'delete': {
      const r = await ask({
        title: `Delete snapshot ${snap}?`,
        message: 'The vdisk keeps its current data; the snapshot cannot be rolled back to or cloned any more.',
        ok: 'Delete', danger: true,
      });
      if (!r) return;
      const done = await mutate('Deleting snapshot ' + snap,
        () => call('DELETE', vdiskPath(name) + '/snapshots/' + encodeURIComponent(snap)).then(() => true));
      if (done) message(`Deleted snapshot ${snap}.`);
      break;
    }
  }
});

document.addEventListener('visibilitychange', () => {
  if (!document.hidden) refresh();
});
window.addEventListener('hashchange', route);
updateTokenButton();
route();
