// Outpost review page: confirm or correct predictions with the keyboard alone.
// Plain JavaScript, no framework, no network beyond this server's own /api/ (the page
// works on a laptop with no connection at all). Data from the database is always put into
// the page with textContent, never as HTML.

'use strict';

// ISO 639-3 codes of src/language.rs: names for the reviewer, BCP 47 tags for the lang attribute.
const LANGUAGE_NAMES = { eng: 'English', fra: 'French', hat: 'Haitian Creole', spa: 'Spanish', por: 'Portuguese', ita: 'Italian', ara: 'Arabic', deu: 'German', nld: 'Dutch', swh: 'Swahili', tur: 'Turkish', rus: 'Russian', ukr: 'Ukrainian', hin: 'Hindi', urd: 'Urdu', ben: 'Bengali', pes: 'Persian', ind: 'Indonesian', tgl: 'Tagalog', vie: 'Vietnamese', cmn: 'Chinese', jpn: 'Japanese', kor: 'Korean' };
const LANGUAGE_TAGS = { eng: 'en', fra: 'fr', hat: 'ht', spa: 'es', por: 'pt', ita: 'it', ara: 'ar', deu: 'de', nld: 'nl', swh: 'sw', tur: 'tr', rus: 'ru', ukr: 'uk', hin: 'hi', urd: 'ur', ben: 'bn', pes: 'fa', ind: 'id', tgl: 'tl', vie: 'vi', cmn: 'zh', jpn: 'ja', kor: 'ko' };

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

const S = {
  queue: [],          // entries of the queue page, least confident first
  total: 0,           // entries matching the filters on the server
  index: 0,           // current entry
  detail: null,       // /api/items/{id} of the current entry
  pred: null,         // the current entry's prediction (with label names)
  order: [],          // label indices by score, highest first: keys 1-9 map onto these
  selection: new Set(), // multi-label: the labels ticked
  undo: [],           // decisions made on this page, newest last
  saving: false,
  token: 0,           // ignores answers to superseded item loads
};

// ---------------------------------------------------------------------------------------
// Server

async function api(path, body) {
  const init = { headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new Error('The review server does not answer (was `outpost review` stopped?)');
  }
  const ct = r.headers.get('Content-Type') || '';
  const data = ct.includes('application/json') ? await r.json() : null;
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}

function filterParams() {
  const p = new URLSearchParams();
  const add = (k, id) => { const v = $(id).value; if (v) p.set(k, v); };
  add('model', 'f-model');
  add('label', 'f-label');
  add('kind', 'f-kind');
  add('folder', 'f-folder');
  add('from', 'f-from');
  add('to', 'f-to');
  if ($('f-reviewed').checked) p.set('reviewed', '1');
  p.set('limit', '500');
  return p.toString();
}

// ---------------------------------------------------------------------------------------
// Status line and counters

let flashTimer = 0;
function flash(msg, isError) {
  const s = $('status');
  s.textContent = msg;
  s.className = 'show' + (isError ? ' error' : '');
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { s.className = ''; }, isError ? 7000 : 3500);
}

function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

function setCounters(c) {
  $('c-today').textContent = String(c.reviewed_today);
  $('c-waiting').textContent = String(c.waiting_to_sync);
  $('c-synced').textContent = String(c.synced);
  $('c-last').textContent = c.last_sync ? fmtTime(c.last_sync) : 'never';
}

async function refreshCounters() {
  try { setCounters(await api('/api/counters')); } catch (e) { /* shown on the next action */ }
}

// Drift: one line per model that is not "ok", with since when and the likely cause.
async function refreshDrift() {
  let d;
  try { d = await api('/api/drift'); } catch (e) { return; }
  const box = $('drift');
  box.replaceChildren();
  for (const m of d.models) {
    if (m.state === 'ok') continue;
    const a = m.last_alert || m.latest;
    const cause = [
      a.novel_labels.length ? 'labels ' + a.novel_labels.map(([k, n]) => `${k} (${n})`).join(', ') : '',
      a.novel_folders.length ? 'from ' + a.novel_folders.map(([k, n]) => `${basename(k) || k} (${n})`).join(', ') : '',
    ].filter(Boolean).join('; ');
    const p = el('p', 'drift-' + m.state,
      `${m.model_name}: ${m.state.toUpperCase()} since ${fmtTime(m.since)} — ${m.latest.novel} of ${m.latest.items} recent items look unlike the training data` +
      (cause ? ` (${cause})` : '') + '. They are first in the queue: check them before trusting the labels.');
    p.dataset.model = m.model_name;
    p.dataset.state = m.state;
    box.append(p);
  }
  box.hidden = box.childElementCount === 0;
}

// ---------------------------------------------------------------------------------------
// Queue

function basename(p) {
  const i = Math.max(p.lastIndexOf('/'), p.lastIndexOf('\\'));
  return i >= 0 ? p.slice(i + 1) : p;
}

function certaintyCell(e) {
  const cell = el('div', 'q-cert', e.certainty.toFixed(2));
  cell.title = e.multi_label
    ? 'Distance of the closest score to its threshold (lower: less sure)'
    : 'Margin between the two best scores (lower: less sure)';
  cell.append(el('small', null, e.multi_label ? 'to threshold' : 'margin'));
  return cell;
}

function renderQueue() {
  const ol = $('queue');
  ol.replaceChildren();
  S.queue.forEach((e, i) => {
    const li = el('li');
    li.dataset.item = e.item_id;
    li.dataset.model = e.model_name;
    li.dataset.kind = e.kind;
    if (e.kind === 'image') {
      const img = el('img', 'thumb');
      img.loading = 'lazy';
      img.alt = '';
      img.src = `/api/items/${encodeURIComponent(e.item_id)}/content`;
      li.append(img);
    } else {
      li.append(el('span', 'doc', 'TXT'));
    }
    const main = el('div', 'q-main');
    const lab = e.labels.length ? e.labels.join(', ') : '(no label)';
    main.append(el('div', 'q-label', `${lab} ${e.top_score.toFixed(2)}`));
    const sub = e.kind === 'text' && e.snippet ? e.snippet : `${basename(e.source)}${e.locator ? ' · ' + e.locator : ''}`;
    main.append(el('div', 'q-sub', sub));
    li.append(main);
    const cert = certaintyCell(e);
    if (e.reviewed_labels) cert.append(el('small', 'q-reviewed', '✓ ' + e.reviewed_labels.join(', ')));
    if (e.unfamiliar) {
      li.classList.add('unfamiliar');
      cert.append(el('small', 'q-unfamiliar', 'unfamiliar'));
    }
    li.append(cert);
    li.addEventListener('click', () => select(i));
    ol.append(li);
  });
  const n = S.queue.length;
  $('queue-count').textContent = n === 0
    ? 'Queue empty'
    : `${S.total} to review, least confident first` + (S.total > n ? ` (showing ${n})` : '');
}

function markCurrent() {
  const items = $('queue').children;
  for (let i = 0; i < items.length; i++) items[i].classList.toggle('current', i === S.index);
  const cur = items[S.index];
  if (cur) cur.scrollIntoView({ block: 'nearest' });
}

async function loadQueue(keep) {
  let q;
  try {
    q = await api('/api/queue?' + filterParams());
  } catch (e) {
    flash(e.message, true);
    return;
  }
  S.queue = q.entries;
  S.total = q.total;
  S.analysed = q.analysed;
  let idx = Math.min(S.index, Math.max(0, S.queue.length - 1));
  if (keep) {
    const i = S.queue.findIndex((e) => e.item_id === keep.item_id && e.model_name === keep.model_name);
    if (i >= 0) idx = i;
  }
  renderQueue();
  await select(idx);
}

async function select(i) {
  if (S.queue.length === 0) {
    S.index = 0;
    S.detail = null;
    S.pred = null;
    $('current').hidden = true;
    $('empty').hidden = S.analysed === 0;
    $('fresh').hidden = S.analysed !== 0;
    document.body.dataset.item = '';
    return;
  }
  S.index = Math.max(0, Math.min(i, S.queue.length - 1));
  markCurrent();
  closeNewLabel();
  const entry = S.queue[S.index];
  const token = ++S.token;
  document.body.dataset.loading = '1';
  let d;
  try {
    d = await api(`/api/items/${encodeURIComponent(entry.item_id)}`);
  } catch (e) {
    if (token === S.token) {
      document.body.dataset.loading = '0';
      flash(e.message, true);
    }
    return;
  }
  if (token !== S.token) return;
  S.detail = d;
  S.pred = d.predictions.find((p) => p.model_name === entry.model_name) || d.predictions[0] || null;
  const p = S.pred;
  S.order = p ? p.scores.map((_, k) => k).sort((a, b) => p.scores[b] - p.scores[a]) : [];
  const start = entry.reviewed_labels || (p ? p.labels : []);
  S.selection = new Set(start);
  renderItem(entry);
  document.body.dataset.item = entry.item_id;
  document.body.dataset.loading = '0';
}

// Fetches the entries after the ones shown (the queue is loaded 500 at a time).
async function loadMore() {
  const p = new URLSearchParams(filterParams());
  p.set('offset', String(S.queue.length));
  const q = await api('/api/queue?' + p.toString());
  const have = new Set(S.queue.map((e) => `${e.item_id}|${e.model_name}`));
  const fresh = q.entries.filter((e) => !have.has(`${e.item_id}|${e.model_name}`));
  S.queue.push(...fresh);
  S.total = q.total;
  if (fresh.length) renderQueue();
  return fresh.length;
}

async function move(step) {
  if (S.queue.length === 0) return;
  const next = S.index + step;
  if (next < 0) {
    flash('This is the first item');
    return;
  }
  if (next >= S.queue.length) {
    let more = 0;
    if (S.total > S.queue.length) {
      try { more = await loadMore(); } catch (e) { flash(e.message, true); return; }
    }
    if (!more) {
      flash('This is the last item of the queue');
      return;
    }
  }
  await select(next);
}

// ---------------------------------------------------------------------------------------
// Current item

function certaintyText(p) {
  const names = p.label_names;
  if (p.scores.length === 0) return 'No scores stored.';
  if (p.multi_label) {
    let best = 0;
    let bestD = Infinity;
    p.scores.forEach((s, k) => {
      const t = p.thresholds ? p.thresholds[k] : 0.5;
      const dist = Math.abs(s - t);
      if (dist < bestD) { bestD = dist; best = k; }
    });
    const t = p.thresholds ? p.thresholds[best] : 0.5;
    return [['Closest call: ', ''], [names[best], 'b'], [` scores ${p.scores[best].toFixed(2)} against its threshold ${t.toFixed(2)} (distance `, ''], [bestD.toFixed(2), 'b'], [').', '']];
  }
  const o = S.order;
  if (o.length < 2) return [[`Score ${p.scores[o[0]].toFixed(2)}.`, '']];
  const a = o[0];
  const b = o[1];
  const margin = p.scores[a] - p.scores[b];
  const unsure = margin < 0.2;
  return [[unsure ? 'Unsure between ' : 'Prefers ', ''], [names[a], 'b'],
    [` (${p.scores[a].toFixed(2)}) ${unsure ? 'and' : 'over'} `, ''], [names[b], 'b'],
    [` (${p.scores[b].toFixed(2)}): margin `, ''], [margin.toFixed(2), 'b'], ['.', '']];
}

function renderItem(entry) {
  const d = S.detail;
  const p = S.pred;
  $('empty').hidden = true;
  $('fresh').hidden = true;
  $('current').hidden = false;
  $('current').dataset.item = d.item_id;
  $('current').dataset.kind = d.kind;

  $('item-title').textContent = basename(d.source) + (d.locator ? ` — ${d.locator}` : '');
  const meta = [d.kind === 'image' ? 'Image tile' : 'Report', d.source];
  if (p) meta.push(`${p.model_name} ${p.model_version}`, `analysed ${fmtTime(p.created_at)}`);
  $('item-meta').textContent = meta.join(' · ');
  const cert = $('certainty');
  cert.replaceChildren();
  if (p) {
    for (const [text, tag] of certaintyText(p)) cert.append(tag ? el(tag, null, text) : document.createTextNode(text));
  }

  // Media: the tile and its place in the scene, or the report.
  const media = $('media');
  media.replaceChildren();
  if (d.kind === 'image') {
    const fig = el('figure', 'tile');
    const img = el('img');
    img.alt = `Image tile ${d.locator || basename(d.source)}`;
    img.src = `/api/items/${encodeURIComponent(d.item_id)}/content`;
    const side = Math.max(d.width || 0, d.height || 0);
    if (side > 0 && side < 256) img.className = 'pixelated';
    fig.append(img);
    if (side > 0) {
      fig.append(el('figcaption', null, `${d.width}×${d.height} px tile` + (side < 256 ? `, shown ×${(256 / side).toFixed(1)}` : '')));
    }
    media.append(fig);
    if (d.scene) media.append(sceneFigure(d));
  } else {
    const box = el('div', 'report');
    box.id = 'report-text';
    box.textContent = d.text || '';
    if (d.language) box.lang = LANGUAGE_TAGS[d.language] || '';
    const wrap = el('div');
    wrap.append(el('p', 'note language', `Language: ${LANGUAGE_NAMES[d.language] || d.language || 'unknown'}`));
    wrap.id = 'report-wrap';
    wrap.append(box);
    if (p && p.truncated) wrap.append(el('p', 'note', 'This report is longer than the model reads: it judged the beginning only.'));
    media.append(wrap);
  }

  // Labels
  $('model-name').textContent = p ? `${p.model_name} ${p.model_version}${p.multi_label ? ' · several labels allowed' : ' · one label'}` : '';
  const hint = $('mode-hint');
  if (!p) {
    hint.textContent = 'No prediction for this item.';
  } else if (!p.installed) {
    hint.textContent = `Model ${p.model_name} is not installed in the models folder: its labels cannot be checked, so decisions are refused.`;
  } else if (p.multi_label) {
    hint.textContent = 'Number keys tick or untick labels; Enter saves the ticked set; c confirms the prediction as it is. The dark mark on a bar is that label\'s threshold.';
  } else {
    const top = p.labels[0] || p.label_names[S.order[0]];
    hint.textContent = `A number key records that label; Enter or c confirms “${top}”.`;
  }
  renderLabels();

  const dl = $('label-options');
  dl.replaceChildren();
  if (p) for (const l of p.known_labels) { const o = el('option'); o.value = l; dl.append(o); }

  // History
  const hist = $('history-list');
  hist.replaceChildren();
  if (d.feedback.length === 0) hist.append(el('li', 'none', 'None yet.'));
  for (const f of d.feedback) {
    const delivery = { pending: 'waiting to sync', synced: 'synced', none: 'not sent' }[f.delivery] || f.delivery;
    let text = `${fmtTime(f.created_at)} · ${f.annotator} · ${f.action} → ${f.labels.join(', ')}`;
    if (f.new_labels.length) text += ` (new: ${f.new_labels.join(', ')})`;
    text += ` · ${f.state}, ${delivery}`;
    hist.append(el('li', f.state, text));
  }
}

function sceneFigure(d) {
  const sc = d.scene;
  const fig = el('figure', 'scene');
  if (!sc.available) {
    fig.append(el('div', 'missing', sc.reason || 'The source scene is not available.'));
    fig.append(el('figcaption', null, 'Place in the scene'));
    return fig;
  }
  const wrap = el('div', 'scene-wrap');
  const img = el('img');
  img.alt = `Overview of ${basename(d.source)}`;
  img.src = `/api/items/${encodeURIComponent(d.item_id)}/scene`;
  const box = el('div', 'scene-box');
  const [x, y, w, h] = sc.tile;
  box.style.left = `${(100 * x) / sc.width}%`;
  box.style.top = `${(100 * y) / sc.height}%`;
  box.style.width = `${(100 * w) / sc.width}%`;
  box.style.height = `${(100 * h) / sc.height}%`;
  img.addEventListener('error', () => {
    wrap.replaceWith(el('div', 'missing', 'The overview of the scene could not be made.'));
  });
  wrap.append(img, box);
  fig.append(wrap);
  fig.append(el('figcaption', null, `Place in the scene: ${basename(d.source)} (${sc.width}×${sc.height} px), tile at ${x},${y}`));
  return fig;
}

function renderLabels() {
  const ol = $('labels');
  ol.replaceChildren();
  const p = S.pred;
  if (!p) return;
  S.order.forEach((k, pos) => {
    const name = p.label_names[k];
    const s = p.scores[k];
    const li = el('li');
    li.dataset.label = name;
    const predicted = p.labels.includes(name);
    const selected = p.multi_label && S.selection.has(name);
    li.classList.toggle('predicted', predicted);
    li.classList.toggle('selected', selected);
    if (pos < 9) {
      li.dataset.key = String(pos + 1);
      const key = el('span', 'k');
      key.append(el('kbd', null, String(pos + 1)));
      li.append(key);
    } else {
      li.append(el('span', 'k'));
    }
    li.append(el('span', 'name', name));
    const bar = el('span', 'bar');
    const fill = el('span', 'fill');
    fill.style.width = `${Math.max(0, Math.min(1, s)) * 100}%`;
    bar.append(fill);
    if (p.multi_label && p.thresholds) {
      const thr = el('span', 'thr');
      thr.style.left = `${p.thresholds[k] * 100}%`;
      thr.title = `threshold ${p.thresholds[k].toFixed(2)}`;
      bar.append(thr);
    }
    li.append(bar);
    li.append(el('span', 'score', s.toFixed(2)));
    let tag = '';
    if (p.multi_label) tag = selected ? (predicted ? '✓ predicted' : '✓ ticked') : (predicted ? 'predicted, unticked' : '');
    else if (predicted) tag = 'predicted';
    li.append(el('span', 'tag', tag));
    li.addEventListener('click', () => pick(pos + 1, name));
    ol.append(li);
  });
  // Given labels the model does not know (multi-label editing).
  if (p.multi_label) {
    for (const name of S.selection) {
      if (p.label_names.includes(name)) continue;
      const li = el('li', 'selected');
      li.dataset.label = name;
      li.append(el('span', 'k'), el('span', 'name', name), el('span', 'bar'), el('span', 'score', ''), el('span', 'tag', '✓ new label'));
      ol.append(li);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Decisions

function current() {
  return S.queue[S.index];
}

function canDecide() {
  if (S.saving) return false;
  const e = current();
  if (!e || !S.pred || !S.detail || S.detail.item_id !== e.item_id) return false;
  return true;
}

async function save(body, describe) {
  if (!canDecide()) return;
  const entry = current();
  S.saving = true;
  document.body.dataset.saving = '1';
  try {
    const r = await api('/api/feedback', Object.assign({ item_id: entry.item_id, model_name: entry.model_name }, body));
    const f = r.feedback;
    S.undo.push({ feedback_id: f.feedback_id, item_id: f.item_id, model_name: f.model_name });
    setCounters(r.counters);
    flash(`${describe || (f.action === 'confirm' ? 'Confirmed' : 'Corrected')}: ${f.labels.join(', ')}` +
      (f.new_labels.length ? ` (new label: ${f.new_labels.join(', ')})` : '') + ' — u to undo');
    if ($('f-reviewed').checked) {
      entry.reviewed_labels = f.labels;
      renderQueue();
      await select(S.index + 1 < S.queue.length ? S.index + 1 : S.index);
    } else {
      S.queue.splice(S.index, 1);
      S.total = Math.max(0, S.total - 1);
      if (S.queue.length === 0) {
        await loadQueue();
      } else {
        renderQueue();
        await select(S.index);
      }
    }
  } catch (e) {
    flash(e.message, true);
  } finally {
    S.saving = false;
    document.body.dataset.saving = '0';
  }
}

function confirmPrediction() {
  if (!canDecide()) return;
  if (S.pred.labels.length === 0) {
    flash('The model gave no label here: pick labels with the number keys or type one with n.', true);
    return;
  }
  save({ confirm: true }, 'Confirmed');
}

function pick(n, name) {
  if (!canDecide()) return;
  const p = S.pred;
  const label = name || p.label_names[S.order[n - 1]];
  if (label === undefined) {
    flash(`No label ${n} for this item.`, true);
    return;
  }
  if (p.multi_label) {
    if (S.selection.has(label)) S.selection.delete(label); else S.selection.add(label);
    renderLabels();
    return;
  }
  save({ labels: [label] });
}

function enter() {
  if (!canDecide()) return;
  if (!S.pred.multi_label) {
    confirmPrediction();
    return;
  }
  if (S.selection.size === 0) {
    flash('Tick at least one label (number keys), or type one with n.', true);
    return;
  }
  save({ labels: [...S.selection] });
}

function openNewLabel() {
  if (!canDecide()) return;
  const box = $('new-label');
  box.hidden = false;
  const input = $('new-label-input');
  input.value = '';
  input.focus();
}

function closeNewLabel() {
  const box = $('new-label');
  if (box.hidden) return;
  box.hidden = true;
  const input = $('new-label-input');
  if (document.activeElement === input) input.blur();
}

function submitNewLabel() {
  const value = $('new-label-input').value.trim();
  if (!value) {
    flash('Type a label first (Esc cancels).', true);
    return;
  }
  closeNewLabel();
  const labels = S.pred && S.pred.multi_label ? [...S.selection, value] : [value];
  save({ labels: [...new Set(labels)], new_labels: [value] });
}

async function undo() {
  if (S.saving) return;
  S.saving = true;
  document.body.dataset.saving = '1';
  try {
    let target = S.undo.pop();
    if (!target) {
      const r = await api('/api/feedback/undoable');
      if (!r.feedback) {
        flash('Nothing to undo.');
        return;
      }
      target = r.feedback;
    }
    const r = await api('/api/undo', { feedback_id: target.feedback_id });
    setCounters(r.counters);
    flash(r.restored
      ? `Undone. The earlier decision (${r.restored.labels.join(', ')}) applies again.`
      : 'Undone: the item is back in the queue.');
    await loadQueue({ item_id: r.item_id, model_name: r.model_name });
  } catch (e) {
    flash(e.message, true);
  } finally {
    S.saving = false;
    document.body.dataset.saving = '0';
  }
}

// ---------------------------------------------------------------------------------------
// Keyboard

document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (t && t.id === 'new-label-input') {
    if (e.key === 'Escape') { e.preventDefault(); closeNewLabel(); }
    else if (e.key === 'Enter') { e.preventDefault(); submitNewLabel(); }
    return;
  }
  if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA')) {
    if (e.key === 'Escape') t.blur();
    return;
  }
  if ((e.ctrlKey || e.metaKey) && !e.altKey && (e.key === 'z' || e.key === 'Z')) {
    e.preventDefault();
    if (!e.repeat) undo();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  const nav = { j: 1, ArrowDown: 1, ArrowRight: 1, k: -1, ArrowUp: -1, ArrowLeft: -1 };
  if (k in nav) {
    e.preventDefault();
    move(nav[k]);
    return;
  }
  if (e.repeat) return; // a held key must not record decisions over and over
  if (/^[1-9]$/.test(k)) {
    e.preventDefault();
    pick(Number(k));
    return;
  }
  switch (k) {
    case 'Enter': e.preventDefault(); enter(); break;
    case 'c': e.preventDefault(); confirmPrediction(); break;
    case 'n': e.preventDefault(); openNewLabel(); break;
    case 'u': e.preventDefault(); undo(); break;
    case 'r': {
      e.preventDefault();
      const cur = current();
      loadQueue(cur ? { item_id: cur.item_id, model_name: cur.model_name } : undefined);
      refreshCounters();
      break;
    }
    default: break;
  }
});

// ---------------------------------------------------------------------------------------
// Start

function fillSelect(id, values, label) {
  const s = $(id);
  for (const v of values) {
    const o = el('option', null, label ? label(v) : v);
    o.value = v;
    s.append(o);
  }
}

// Encrypted data: until the passphrase is typed, the API answers 423 and this form shows.
function waitForUnlock() {
  return new Promise((resolve) => {
    $('lock').hidden = false;
    $('passphrase').focus();
    $('unlock-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      $('unlock').disabled = true;
      $('unlock-error').textContent = 'Unlocking…';
      try {
        await api('/api/unlock', { passphrase: $('passphrase').value });
        $('passphrase').value = '';
        $('lock').hidden = true;
        resolve();
      } catch (err) {
        $('unlock-error').textContent = err.message;
        $('passphrase').select();
      } finally {
        $('unlock').disabled = false;
      }
    });
  });
}

async function start() {
  try {
    if ((await api('/api/lock')).locked) await waitForUnlock();
  } catch (e) {
    flash(e.message, true);
  }
  try {
    const [session, facets] = await Promise.all([api('/api/session'), api('/api/filters')]);
    $('annotator').textContent = session.annotator;
    const shared = [];
    if (session.send_images) shared.push('image tiles');
    if (session.send_reports) shared.push('report text');
    $('sharing').textContent = shared.length ? `sends ${shared.join(' and ')} with feedback` : 'sends labels and embeddings only';
    fillSelect('f-model', facets.models);
    fillSelect('f-label', facets.labels);
    fillSelect('f-folder', facets.folders);
    if (facets.first_day) { $('f-from').min = facets.first_day; $('f-to').min = facets.first_day; }
    if (facets.last_day) { $('f-from').max = facets.last_day; $('f-to').max = facets.last_day; }
  } catch (e) {
    flash(e.message, true);
  }
  $('filters').addEventListener('change', (e) => {
    S.index = 0;
    loadQueue();
    // Give the keyboard back to the review keys (except while typing a date).
    if (e.target.tagName === 'SELECT' || e.target.type === 'checkbox') e.target.blur();
  });
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  await Promise.all([refreshCounters(), refreshDrift(), loadQueue()]);
  setInterval(refreshCounters, 15000);
  document.body.dataset.ready = '1';
}

start();
