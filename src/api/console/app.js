// The inventory console. Plain script, no framework: it calls the service's JSON API with
// the operator's token and shows every value with textContent (never as markup), so a
// remark or trace id full of HTML stays text. The Content-Security-Policy allows only this
// file to run.
'use strict';

const TOKEN_KEY = 'inventory-console-token';
const PAGES = ['overview', 'sku', 'order', 'holds', 'reconcile'];
const state = { role: 'anonymous', skuLedgerBefore: null, samples: [], timer: null };

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

class ApiError extends Error {
  constructor(code, message, data) {
    super(code + ': ' + message);
    this.code = code;
    this.data = data;
  }
}

// One call to the API; resolves to the envelope's data, rejects with its code and message.
async function api(method, path, body) {
  const headers = {};
  if (token()) headers.Authorization = 'Bearer ' + token();
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let envelope;
  try {
    envelope = await response.json();
  } catch (e) {
    throw new ApiError('HTTP_' + response.status, 'the service answered without JSON');
  }
  if (envelope.code !== '0') {
    throw new ApiError(envelope.code, envelope.message, envelope.data);
  }
  return envelope.data;
}

function say(text, kind) {
  const box = $('message');
  box.textContent = text;
  box.className = 'message ' + (kind || 'info');
}

function fail(error) {
  say(error.message || String(error), 'error');
}

function cell(row, value, className) {
  const td = document.createElement('td');
  td.textContent = value === null || value === undefined ? '' : String(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

// Fills a table: headers, then one row per item from `columns(item)` -> [values].
function fill(table, headers, items, columns, rowClass) {
  table.replaceChildren();
  const head = document.createElement('tr');
  for (const h of headers) {
    const th = document.createElement('th');
    th.textContent = h;
    head.appendChild(th);
  }
  table.appendChild(head);
  for (const item of items) {
    const tr = document.createElement('tr');
    if (rowClass) tr.className = rowClass(item) || '';
    for (const value of columns(item)) cell(tr, value);
    table.appendChild(tr);
  }
  if (items.length === 0) {
    const tr = document.createElement('tr');
    const td = cell(tr, 'nothing to show', 'empty');
    td.colSpan = headers.length;
    table.appendChild(tr);
  }
}

function append(table, items, columns) {
  for (const item of items) {
    const tr = document.createElement('tr');
    for (const value of columns(item)) cell(tr, value);
    table.appendChild(tr);
  }
}

function showRole(role) {
  state.role = role;
  document.body.classList.toggle('role-admin', role === 'admin');
  document.body.classList.toggle('role-service', role === 'service' || role === 'admin');
  $('role').textContent = 'role: ' + role;
}

async function login() {
  const given = $('token').value.trim();
  const before = token();
  sessionStorage.setItem(TOKEN_KEY, given);
  try {
    const who = await api('GET', '/ops/whoami');
    showRole(who.role);
    $('token').value = '';
    say('signed in as ' + who.role, 'ok');
  } catch (e) {
    // A wrong token changes nothing: the previous one (if any) stays in use.
    if (before) sessionStorage.setItem(TOKEN_KEY, before);
    else sessionStorage.removeItem(TOKEN_KEY);
    fail(e);
  }
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  showRole('anonymous');
  say('token forgotten', 'info');
}

// ---- Overview -------------------------------------------------------------------------

function card(parent, label, value, kind) {
  const div = document.createElement('div');
  div.className = 'card ' + (kind || '');
  const l = document.createElement('div');
  l.className = 'label';
  l.textContent = label;
  const v = document.createElement('div');
  v.className = 'value';
  v.textContent = value;
  div.append(l, v);
  parent.appendChild(div);
}

const SERIES = [
  { name: 'reserved', outcomes: ['reserved'], className: 'line-ok' },
  { name: 'refused: insufficient', outcomes: ['insufficient'], className: 'line-warn' },
  { name: 'refused: other', outcomes: ['conflict', 'cancelled', 'not_found', 'overloaded', 'error'], className: 'line-bad' },
];

function drawChart() {
  const svg = $('overview-chart');
  svg.replaceChildren();
  const s = state.samples;
  if (s.length < 2) return;
  const rates = SERIES.map((series) => {
    const out = [];
    for (let i = 1; i < s.length; i++) {
      const dt = (s[i].at - s[i - 1].at) / 1000;
      const sum = (x) => series.outcomes.reduce((a, o) => a + (x.counts[o] || 0), 0);
      out.push(dt > 0 ? Math.max(0, sum(s[i]) - sum(s[i - 1])) / dt : 0);
    }
    return out;
  });
  const max = Math.max(1, ...rates.flat());
  const ns = 'http://www.w3.org/2000/svg';
  rates.forEach((points, k) => {
    const line = document.createElementNS(ns, 'polyline');
    // One rate so far: a flat segment across the chart.
    if (points.length === 1) points.push(points[0]);
    const step = 600 / Math.max(1, points.length - 1);
    line.setAttribute('points', points.map((r, i) => (i * step).toFixed(1) + ',' + (118 - (r / max) * 110).toFixed(1)).join(' '));
    line.setAttribute('class', SERIES[k].className);
    svg.appendChild(line);
  });
  const legend = $('overview-legend');
  legend.replaceChildren();
  SERIES.forEach((series, k) => {
    const span = document.createElement('span');
    span.className = series.className;
    const last = rates[k][rates[k].length - 1] || 0;
    span.textContent = series.name + ': ' + last.toFixed(1) + '/s';
    legend.appendChild(span);
  });
  const top = document.createElement('span');
  top.textContent = 'top of chart: ' + max.toFixed(1) + '/s';
  legend.appendChild(top);
}

async function overview() {
  try {
    const o = await api('GET', '/ops/overview');
    const box = $('overview-status');
    box.replaceChildren();
    const r = o.readiness;
    card(box, 'readiness', r.status, r.status === 'UP' ? 'ok' : 'bad');
    card(box, 'redis', r.redis.status, r.redis.status === 'UP' ? 'ok' : 'bad');
    card(box, 'database', r.database.status, r.database.status === 'UP' ? 'ok' : 'bad');
    card(box, 'kafka', o.kafka.enabled ? 'on, lag ' + o.kafka.consumerLag : 'off');
    card(box, 'journal not persisted', r.journal ? r.journal.notPersisted : 'unknown', r.journal && r.journal.notPersisted > 1000 ? 'bad' : '');
    card(box, 'oldest unpersisted entry', o.journalOldestAgeMs === null ? 'unknown' : (o.journalOldestAgeMs / 1000).toFixed(1) + ' s',
      o.journalOldestAgeMs > 60000 ? 'bad' : '');
    card(box, 'due holds not released', r.expiry ? r.expiry.dueHolds : 'unknown');
    card(box, 'holds ending in 10 min', o.holdsEndingIn10Min === null ? 'unknown' : o.holdsEndingIn10Min);
    const leader = o.leader && o.leader.instance ? o.leader.instance + (o.leader.thisInstance ? ' (this one)' : '') : 'none';
    card(box, 'supervisor leader', leader);
    state.samples.push({ at: Date.now(), counts: o.reservations });
    if (state.samples.length > 60) state.samples.shift();
    drawChart();
  } catch (e) {
    fail(e);
  }
}

// ---- SKU ------------------------------------------------------------------------------

function ledgerColumns(r) {
  return [r.id, r.createdAt, r.warehouseId, r.reason, r.deltaAvailable, r.deltaReserved,
    r.availableAfter, r.reservedAfter, r.orderNo, r.traceId, r.remark];
}
const LEDGER_HEADERS = ['id', 'time', 'warehouse', 'reason', 'Δ available', 'Δ reserved',
  'available after', 'reserved after', 'orderNo', 'trace id', 'remark'];

async function showSku(quiet) {
  const sku = $('sku-id').value.trim();
  if (!sku) return;
  try {
    const positions = await api('GET', '/inventory/' + encodeURIComponent(sku) + '/all?source=db');
    // The DB's rows with Redis' counters beside them; a row where they differ is marked
    // (it may be the journal catching up, or a difference for reconciliation).
    fill($('sku-positions'),
      ['warehouse', 'available (DB)', 'reserved (DB)', 'available (Redis)', 'reserved (Redis)',
        'sold (Redis)', 'updated'],
      positions,
      (p) => [p.warehouseId, p.availableQty, p.reservedQty, p.redisAvailableQty, p.redisReservedQty,
        p.redisConfirmedQty, p.updatedAt],
      (p) => (p.redisAvailableQty !== p.availableQty || p.redisReservedQty !== p.reservedQty ? 'mismatch' : ''));
    const page = await api('GET', '/inventory/ledger?skuId=' + encodeURIComponent(sku) + '&limit=50');
    fill($('sku-ledger'), LEDGER_HEADERS, page.rows, ledgerColumns);
    state.skuLedgerBefore = page.nextBeforeId;
    $('sku-ledger-more').hidden = !page.nextBeforeId;
    if (quiet !== true) say('sku ' + sku + ': ' + positions.length + ' warehouse(s)', 'ok');
  } catch (e) {
    fill($('sku-positions'), ['warehouse'], [], () => []);
    fill($('sku-ledger'), LEDGER_HEADERS, [], ledgerColumns);
    fail(e);
  }
}

async function olderSkuLedger() {
  const sku = $('sku-id').value.trim();
  if (!sku || !state.skuLedgerBefore) return;
  try {
    const page = await api('GET', '/inventory/ledger?skuId=' + encodeURIComponent(sku) +
      '&limit=50&beforeId=' + state.skuLedgerBefore);
    append($('sku-ledger'), page.rows, ledgerColumns);
    state.skuLedgerBefore = page.nextBeforeId;
    $('sku-ledger-more').hidden = !page.nextBeforeId;
  } catch (e) {
    fail(e);
  }
}

// A fresh id for one change, so that a retried click applies it once. crypto.randomUUID
// exists only in secure contexts (HTTPS or localhost); getRandomValues everywhere.
function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return 'console-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function adjust() {
  const sku = $('sku-id').value.trim();
  const warehouse = $('adjust-warehouse').value.trim();
  const units = Math.abs(parseInt($('adjust-delta').value, 10));
  const reason = $('adjust-reason').value;
  if (!sku || !warehouse || !units) {
    say('give a skuId, a warehouseId and a number of units', 'error');
    return;
  }
  const delta = reason === 'OUTBOUND' ? -units : units;
  if (!window.confirm(reason + ' ' + delta + ' of sku ' + sku + ' in warehouse ' + warehouse + '?')) return;
  try {
    const result = await api('POST', '/inventory/' + encodeURIComponent(sku) + '/stock?warehouseId=' +
      encodeURIComponent(warehouse), {
      delta, reason, requestId: requestId(), remark: $('adjust-remark').value,
    });
    await showSku(true);
    say('applied: available now ' + result.availableQty, 'ok');
  } catch (e) {
    fail(e);
  }
}

async function sync() {
  const sku = $('sku-id').value.trim();
  const warehouse = $('adjust-warehouse').value.trim();
  if (!sku || !warehouse) return;
  if (!window.confirm('Copy the DB stock of sku ' + sku + ' in warehouse ' + warehouse + ' to Redis?')) return;
  try {
    const result = await api('POST', '/inventory/' + encodeURIComponent(sku) + '/sync?warehouseId=' +
      encodeURIComponent(warehouse));
    await showSku(true);
    say('sync: ' + result.status, 'ok');
  } catch (e) {
    fail(e);
  }
}

// ---- Order ----------------------------------------------------------------------------

async function showOrder(quiet) {
  const orderNo = $('order-no').value.trim();
  if (!orderNo) return;
  try {
    const lines = await api('GET', '/inventory/reservations?orderNo=' + encodeURIComponent(orderNo));
    fill($('order-lines'), ['sku', 'warehouse', 'held', 'sold', 'status', 'expires', 'expired'], lines,
      (l) => [l.skuId, l.warehouseId, l.qty, l.confirmedQty, l.status, l.expireAt, l.expired ? 'yes' : 'no']);
    const page = await api('GET', '/inventory/ledger?orderNo=' + encodeURIComponent(orderNo) + '&limit=200');
    fill($('order-ledger'), LEDGER_HEADERS, page.rows, ledgerColumns);
    if (quiet !== true) say(lines.length ? 'order ' + orderNo + ': ' + lines.length + ' line(s)' : 'no such order', lines.length ? 'ok' : 'error');
  } catch (e) {
    fail(e);
  }
}

async function transition(kind) {
  const orderNo = $('order-no').value.trim();
  if (!orderNo) return;
  if (!window.confirm(kind + ' order ' + orderNo + '?')) return;
  try {
    const path = '/inventory/reservations/' + kind + '?orderNo=' + encodeURIComponent(orderNo) +
      (kind === 'release' ? '&reason=' + encodeURIComponent('console') : '');
    const result = await api('POST', path);
    await showOrder(true);
    say(kind + ': order ' + orderNo + ' is ' + result.status, 'ok');
  } catch (e) {
    fail(e);
  }
}

// ---- Holds ----------------------------------------------------------------------------

async function showHolds() {
  const sku = $('holds-sku').value.trim();
  try {
    const holds = await api('GET', '/inventory/holds?limit=100' + (sku ? '&skuId=' + encodeURIComponent(sku) : ''));
    fill($('holds-table'), ['orderNo', 'sku', 'warehouse', 'qty', 'expires', 'expired'], holds,
      (h) => [h.orderNo, h.skuId, h.warehouseId, h.qty, h.expireAt, h.expired ? 'yes' : 'no'],
      (h) => (h.expired ? 'mismatch' : ''));
  } catch (e) {
    fail(e);
  }
}

// ---- Reconciliation -------------------------------------------------------------------

function differenceText(d) {
  return d.kind + ' sku ' + d.skuId + ' warehouse ' + d.warehouseId + ': ' + d.detail +
    (d.repaired ? ' (repaired)' : '');
}

async function reconcile(repair) {
  if (repair && !window.confirm('Run reconciliation and repair what it finds?')) return;
  const box = $('reconcile-result');
  try {
    const report = await api('POST', '/inventory/reconcile?repair=' + repair);
    box.replaceChildren();
    const head = document.createElement('p');
    head.id = 'reconcile-summary';
    head.textContent = report.differences.length === 0
      ? 'no differences (' + report.positionsChecked + ' positions checked)'
      : report.differences.length + ' difference(s) in ' + report.positionsChecked + ' positions';
    box.appendChild(head);
    const list = document.createElement('ul');
    for (const d of report.differences) {
      const li = document.createElement('li');
      li.className = 'difference';
      li.textContent = differenceText(d);
      list.appendChild(li);
    }
    box.appendChild(list);
    await reports();
  } catch (e) {
    fail(e);
  }
}

async function reports() {
  try {
    const recent = await api('GET', '/inventory/reconcile/reports');
    fill($('reconcile-reports'), ['finished', 'trigger', 'instance', 'repair', 'positions', 'differences'], recent,
      (r) => [r.finishedAt, r.trigger, r.instance, r.report.repair ? 'yes' : 'no', r.report.positionsChecked,
        r.report.differences.length === 0 ? 'none' : r.report.differences.map(differenceText).join('; ')]);
  } catch (e) {
    fail(e);
  }
}

// ---- Navigation -----------------------------------------------------------------------

function show() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'overview';
  for (const p of PAGES) {
    $('page-' + p).hidden = p !== page;
    $('nav-' + p).classList.toggle('current', p === page);
  }
  clearInterval(state.timer);
  if (page === 'overview') {
    overview();
    state.timer = setInterval(overview, 3000);
  }
  if (page === 'holds') showHolds();
  if (page === 'reconcile') reports();
}

function onEnter(input, action) {
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') action();
  });
}

document.addEventListener('DOMContentLoaded', async () => {
  $('login-button').addEventListener('click', login);
  onEnter($('token'), login);
  $('logout-button').addEventListener('click', logout);
  $('sku-search').addEventListener('click', () => showSku());
  onEnter($('sku-id'), () => showSku());
  $('sku-ledger-more').addEventListener('click', olderSkuLedger);
  $('adjust-button').addEventListener('click', adjust);
  $('sync-button').addEventListener('click', sync);
  $('order-search').addEventListener('click', () => showOrder());
  onEnter($('order-no'), () => showOrder());
  $('order-confirm').addEventListener('click', () => transition('confirm'));
  $('order-release').addEventListener('click', () => transition('release'));
  $('holds-search').addEventListener('click', showHolds);
  $('reconcile-report').addEventListener('click', () => reconcile(false));
  $('reconcile-repair').addEventListener('click', () => reconcile(true));
  window.addEventListener('hashchange', show);
  $('sku-ledger-more').hidden = true;
  try {
    showRole((await api('GET', '/ops/whoami')).role);
  } catch (e) {
    showRole('anonymous');
    fail(e);
  }
  show();
});
