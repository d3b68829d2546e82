// outbound-runner console: plain JS, no framework, no inline code (the CSP forbids it).
// Everything that comes from the database is put on the page as text (textContent or text
// nodes), never parsed as markup. A job id is an opaque string: it is never parsed as a number,
// and it goes into URLs through encodeURIComponent.
(function () {
  'use strict';

  var main = document.getElementById('main');
  var source = null; // the overview's EventSource
  var lastOverview = null;

  // --- helpers -------------------------------------------------------------------------------

  // el('td', {class: 'x'}, 'text', child, ...): children that are strings become text nodes.
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] === null || attrs[k] === undefined || attrs[k] === false) return;
        if (k === 'text') node.textContent = String(attrs[k]);
        else node.setAttribute(k, attrs[k] === true ? '' : String(attrs[k]));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }
  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function idOf(v) { return v === null || v === undefined ? '' : String(v); }
  function jobHref(id) { return '/console/jobs/' + encodeURIComponent(idOf(id)); }
  function when(t) {
    if (!t) return '–';
    var d = new Date(t);
    return isNaN(d.getTime()) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }
  function num(v) { return v === null || v === undefined ? '–' : String(v); }
  function age(s) {
    if (s === null || s === undefined) return 'none due';
    s = Number(s);
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }
  function statusTag(s) { return el('span', { class: 'status ' + String(s).replace(/[^a-z_]/g, ''), text: s }); }

  function flash(text, isError) {
    var f = document.getElementById('flash');
    f.textContent = text;
    f.className = isError ? 'error' : '';
    f.hidden = !text;
  }

  function api(method, path, body) {
    var opts = { method: method, credentials: 'same-origin', headers: { 'Accept': 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return { ok: false, error: 'HTTP ' + r.status }; }).then(function (j) {
        if (r.status === 401) { showSignIn(); throw new Error('signed out'); }
        if (!r.ok || j.ok === false) throw new Error(j.error || ('HTTP ' + r.status));
        return j;
      });
    });
  }

  function confirmStep(text) {
    return new Promise(function (resolve) {
      var box = document.getElementById('confirm');
      document.getElementById('confirm-text').textContent = text;
      box.hidden = false;
      var yes = document.getElementById('confirm-yes');
      var no = document.getElementById('confirm-no');
      function done(v) { box.hidden = true; yes.onclick = null; no.onclick = null; resolve(v); }
      yes.onclick = function () { done(true); };
      no.onclick = function () { done(false); };
    });
  }

  // --- sign-in -------------------------------------------------------------------------------

  function showSignIn() {
    stopLive();
    document.getElementById('nav').hidden = true;
    document.getElementById('signin').hidden = false;
    clear(main);
    document.getElementById('token').focus();
  }

  document.getElementById('signin-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var input = document.getElementById('token');
    var err = document.getElementById('signin-error');
    err.textContent = '';
    fetch('/console/api/signin', {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
      body: JSON.stringify({ token: input.value })
    }).then(function (r) {
      input.value = '';
      if (r.ok) { document.getElementById('signin').hidden = true; route(); return; }
      return r.json().then(function (j) { err.textContent = j.error || ('HTTP ' + r.status); });
    }).catch(function (e2) { err.textContent = String(e2.message || e2); });
  });

  document.getElementById('signout').addEventListener('click', function () {
    api('POST', '/console/api/signout', {}).catch(function () {}).then(function () {
      history.pushState(null, '', '/console/');
      showSignIn();
    });
  });

  // --- routing -------------------------------------------------------------------------------

  document.addEventListener('click', function (e) {
    var a = e.target.closest ? e.target.closest('a') : null;
    if (!a || a.target || e.ctrlKey || e.metaKey || e.shiftKey) return;
    var href = a.getAttribute('href');
    if (!href || href.indexOf('/console/') !== 0 || href.indexOf('/console/api/') === 0) return;
    e.preventDefault();
    history.pushState(null, '', href);
    route();
  });
  window.addEventListener('popstate', route);

  function setNav(name) {
    document.querySelectorAll('nav a').forEach(function (a) {
      a.className = a.getAttribute('data-nav') === name ? 'active' : '';
    });
  }

  function route() {
    flash('');
    api('GET', '/console/api/session').then(function (s) {
      if (!s.signedIn) { showSignIn(); return; }
      document.getElementById('signin').hidden = true;
      document.getElementById('nav').hidden = false;
      var path = location.pathname;
      stopLive();
      clear(main);
      if (path === '/console/' || path === '/console') { setNav('overview'); overview(); }
      else if (path === '/console/jobs') { setNav('jobs'); jobs(); }
      else if (path.indexOf('/console/jobs/') === 0) { setNav('jobs'); job(decodeURIComponent(path.slice('/console/jobs/'.length))); }
      else if (path === '/console/numbers') { setNav('numbers'); numbers(); }
      else { main.appendChild(el('p', { text: 'No such page.' })); }
    }).catch(function (e) { if (e.message !== 'signed out') flash(e.message, true); });
  }

  // --- overview ------------------------------------------------------------------------------

  var STATUSES = ['queued', 'running', 'failed', 'cancelled'];

  function card(key, label) {
    return el('div', { class: 'card', 'data-card': key }, el('div', { class: 'label', text: label }),
      el('div', { class: 'value', 'data-stat': key, text: '…' }));
  }

  function overview() {
    main.appendChild(el('h1', { text: 'Overview' }));
    var cards = el('div', { class: 'cards' });
    STATUSES.forEach(function (s) { cards.appendChild(card(s, s)); });
    [['done24h', 'done (24 h)'], ['failed24h', 'failed (24 h)'], ['total', 'all jobs (estimate)'],
      ['oldest', 'oldest due job waited'], ['delivered', 'messages delivered (1 h)'],
      ['read', 'messages read (1 h)'], ['msgFailed', 'messages failed (1 h)'],
      ['unknown', 'unknown, unsettled'], ['inflight', 'in flight / limit (this runner)'],
      ['p95', 'send latency p95 (this runner)'], ['waits', 'connection waits (this runner)']]
      .forEach(function (c) { cards.appendChild(card(c[0], c[1])); });
    main.appendChild(cards);
    main.appendChild(el('div', { class: 'charts' },
      el('div', { class: 'chart' }, el('h2', { text: 'Done / failed per minute, last hour' }), el('div', { id: 'chart-minute' })),
      el('div', { class: 'chart' }, el('h2', { text: 'Done / failed per hour, last 24 h' }), el('div', { id: 'chart-hour' }))));
    main.appendChild(el('h2', { text: 'Runners' }));
    main.appendChild(el('table', { id: 'runners' }, el('thead', null, el('tr', null, el('th', { text: 'runner' }), el('th', { text: 'running jobs' }))), el('tbody')));
    main.appendChild(el('h2', { text: 'Database connections of the runners, by host' }));
    main.appendChild(el('table', { id: 'connections' }, el('thead', null, el('tr', null, el('th', { text: 'host' }), el('th', { text: 'connections' }))), el('tbody')));
    main.appendChild(el('p', { class: 'muted', id: 'generated' }));
    if (lastOverview) drawOverview(lastOverview);
    startLive();
  }

  function setStat(key, value) {
    var n = main.querySelector('[data-stat="' + key + '"]');
    if (n) n.textContent = value;
  }

  function drawOverview(o) {
    lastOverview = o;
    if (!main.querySelector('[data-stat]')) return;
    var db = o.db || {};
    var by = db.byStatus || {};
    STATUSES.forEach(function (s) { setStat(s, num(by[s] || 0)); });
    setStat('done24h', num(db.done24h));
    setStat('failed24h', num(db.failed24h));
    setStat('total', num(db.totalEstimate));
    setStat('oldest', age(db.oldestDueSeconds));
    var m = db.messages || {};
    setStat('delivered', num(m.delivered));
    setStat('read', num(m.read));
    setStat('msgFailed', num(m.failed));
    setStat('unknown', num(db.unknownUnsettled));
    var me = o.thisRunner || {};
    setStat('inflight', num(me.inFlight) + ' / ' + num(me.inFlightLimit));
    setStat('p95', me.sendP95Ms === null || me.sendP95Ms === undefined ? 'no sends' : me.sendP95Ms + ' ms');
    setStat('waits', num(me.connectionWaits));
    fillRows('#runners tbody', db.runners || [], function (r) { return [r.name, r.running]; }, 'no runner holds a job now');
    fillRows('#connections tbody', db.connections || [], function (c) { return [c.host, c.connections]; }, 'none');
    chart(document.getElementById('chart-minute'), db.perMinute || [], 60, 60000);
    chart(document.getElementById('chart-hour'), db.perHour || [], 24, 3600000);
    var g = document.getElementById('generated');
    if (g) g.textContent = 'As of ' + when(o.generatedAt) + ', answered by runner ' + (me.name || '?') + ' (statement took ' + Number(o.queryMs || 0).toFixed(1) + ' ms)';
  }

  function fillRows(sel, rows, cells, empty) {
    var tb = main.querySelector(sel);
    if (!tb) return;
    clear(tb);
    if (!rows.length) { tb.appendChild(el('tr', null, el('td', { colspan: 2, class: 'muted', text: empty }))); return; }
    rows.forEach(function (r) {
      tb.appendChild(el('tr', null, cells(r).map(function (c) { return el('td', { text: c }); })));
    });
  }

  // Stacked bars (done below, failed above) as SVG built node by node.
  function chart(box, points, n, step) {
    if (!box) return;
    var ns = 'http://www.w3.org/2000/svg';
    var now = Date.now();
    var end = Math.floor(now / step) * step;
    var buckets = [];
    for (var i = n - 1; i >= 0; i--) buckets.push({ at: end - i * step, done: 0, failed: 0 });
    points.forEach(function (p) {
      var t = Math.floor(new Date(p.at).getTime() / step) * step;
      var idx = (t - (end - (n - 1) * step)) / step;
      if (idx >= 0 && idx < n) { buckets[idx].done += Number(p.done) || 0; buckets[idx].failed += Number(p.failed) || 0; }
    });
    var max = 1;
    buckets.forEach(function (b) { max = Math.max(max, b.done + b.failed); });
    var W = 600, H = 130, bw = W / n;
    var svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + (H + 12));
    svg.setAttribute('preserveAspectRatio', 'none');
    var axis = document.createElementNS(ns, 'line');
    axis.setAttribute('x1', 0); axis.setAttribute('x2', W); axis.setAttribute('y1', H); axis.setAttribute('y2', H);
    axis.setAttribute('class', 'axis');
    svg.appendChild(axis);
    buckets.forEach(function (b, i) {
      var hd = H * b.done / max, hf = H * b.failed / max;
      [['done', H - hd, hd], ['failed', H - hd - hf, hf]].forEach(function (part) {
        if (part[2] <= 0) return;
        var r = document.createElementNS(ns, 'rect');
        r.setAttribute('x', (i * bw + 1).toFixed(1));
        r.setAttribute('width', Math.max(bw - 2, 1).toFixed(1));
        r.setAttribute('y', part[1].toFixed(1));
        r.setAttribute('height', part[2].toFixed(1));
        r.setAttribute('class', part[0]);
        var t = document.createElementNS(ns, 'title');
        t.textContent = when(b.at) + ': ' + b.done + ' done, ' + b.failed + ' failed';
        r.appendChild(t);
        svg.appendChild(r);
      });
    });
    var label = document.createElementNS(ns, 'text');
    label.setAttribute('x', 2); label.setAttribute('y', 10);
    label.textContent = 'max ' + max;
    svg.appendChild(label);
    clear(box);
    box.appendChild(svg);
  }

  function startLive() {
    var ind = document.getElementById('live');
    source = new EventSource('/console/api/events');
    source.addEventListener('overview', function (e) {
      ind.textContent = 'live';
      ind.className = 'live on';
      try { drawOverview(JSON.parse(e.data)); } catch (err) { flash('bad overview: ' + err.message, true); }
    });
    source.onerror = function () {
      ind.textContent = 'reconnecting…';
      ind.className = 'live';
      // A lost session ends the stream with 401: find out, and show the sign-in.
      api('GET', '/console/api/session').then(function (s) { if (!s.signedIn) showSignIn(); }).catch(function () {});
    };
  }
  function stopLive() {
    if (source) { source.close(); source = null; }
    var ind = document.getElementById('live');
    ind.textContent = '';
    ind.className = 'live';
  }

  // --- jobs ----------------------------------------------------------------------------------

  var FILTERS = [['status', 'status'], ['code', 'error code'], ['to', 'to'], ['from', 'from'],
    ['requestId', 'requestId'], ['since', 'since'], ['until', 'until'], ['id', 'id']];

  function currentFilter() {
    var q = new URLSearchParams(location.search);
    q.delete('cursor');
    return q;
  }

  function jobs() {
    var q = new URLSearchParams(location.search);
    main.appendChild(el('h1', { text: 'Jobs' }));
    var form = el('form', { class: 'filters', id: 'jobs-filter' });
    FILTERS.forEach(function (f) {
      var input;
      if (f[0] === 'status') {
        input = el('select', { name: 'status' });
        ['', 'queued', 'running', 'done', 'failed', 'cancelled'].forEach(function (s) {
          input.appendChild(el('option', { value: s, text: s || 'any' }));
        });
        input.value = q.get('status') || '';
      } else {
        input = el('input', { name: f[0], size: f[0] === 'requestId' ? 16 : 12, placeholder: f[0] === 'since' || f[0] === 'until' ? '1h, 2026-12-01' : '' });
        input.value = q.get(f[0]) || '';
      }
      form.appendChild(el('label', null, f[1], input));
    });
    form.appendChild(el('button', { type: 'submit', class: 'primary', id: 'filter-apply', text: 'Filter' }));
    form.appendChild(el('a', { href: '/console/jobs', text: 'clear' }));
    form.addEventListener('submit', function (e) {
      e.preventDefault();
      var p = new URLSearchParams();
      FILTERS.forEach(function (f) {
        var v = form.elements[f[0]].value.trim();
        if (v) p.set(f[0], v);
      });
      history.pushState(null, '', '/console/jobs' + (p.toString() ? '?' + p.toString() : ''));
      route();
    });
    main.appendChild(form);

    var actions = el('div', { class: 'actions' },
      el('button', { type: 'button', id: 'retry-selected', text: 'Retry selected' }),
      el('button', { type: 'button', id: 'cancel-selected', text: 'Cancel selected' }),
      el('button', { type: 'button', id: 'retry-matching', text: 'Retry all matching the filter' }),
      el('button', { type: 'button', id: 'cancel-matching', text: 'Cancel all matching the filter' }));
    main.appendChild(actions);
    var table = el('table', { id: 'jobs-table' }, el('thead', null, el('tr', null,
      el('th', null, el('input', { type: 'checkbox', id: 'select-all', title: 'select the page' })),
      ['id', 'status', 'to', 'requestId', 'attempts', 'error', 'created', 'updated'].map(function (h) { return el('th', { text: h }); }))),
      el('tbody'));
    main.appendChild(table);
    var more = el('p', { id: 'paging' });
    main.appendChild(more);

    function selected() {
      return Array.prototype.map.call(table.querySelectorAll('tbody input[type=checkbox]:checked'), function (c) {
        return c.getAttribute('data-id');
      });
    }
    table.querySelector('#select-all').addEventListener('change', function (e) {
      table.querySelectorAll('tbody input[type=checkbox]').forEach(function (c) { c.checked = e.target.checked; });
    });
    document.getElementById('retry-selected').addEventListener('click', function () {
      var ids = selected();
      if (!ids.length) { flash('Select jobs first.', true); return; }
      act('retry', { ids: ids }, ids.length + ' selected job(s)');
    });
    document.getElementById('cancel-selected').addEventListener('click', function () {
      var ids = selected();
      if (!ids.length) { flash('Select jobs first.', true); return; }
      act('cancel', { ids: ids }, ids.length + ' selected job(s)');
    });
    document.getElementById('retry-matching').addEventListener('click', function () {
      act('retry', { filter: currentFilter().toString() }, 'every job matching the filter');
    });
    document.getElementById('cancel-matching').addEventListener('click', function () {
      act('cancel', { filter: currentFilter().toString() }, 'every job matching the filter');
    });

    api('GET', '/console/api/jobs' + location.search).then(function (page) {
      var tb = table.querySelector('tbody');
      if (!page.jobs.length) tb.appendChild(el('tr', null, el('td', { colspan: 9, class: 'muted', text: 'no job matches' })));
      page.jobs.forEach(function (j) {
        var id = idOf(j.id);
        tb.appendChild(el('tr', { 'data-id': id },
          el('td', null, el('input', { type: 'checkbox', 'data-id': id })),
          el('td', null, el('a', { href: jobHref(id), class: 'job-link', text: id })),
          el('td', null, statusTag(j.status)),
          el('td', { text: j.to || '–' }),
          el('td', { class: 'wrap', text: j.requestId || '–' }),
          el('td', { text: j.attempts + (j.maxAttempts ? '/' + j.maxAttempts : '') }),
          el('td', { class: 'wrap' }, j.lastErrorCode ? el('b', { text: j.lastErrorCode }) : null, j.lastError ? ' ' + j.lastError : ''),
          el('td', { text: when(j.createdAt) }),
          el('td', { text: when(j.updatedAt) })));
      });
      if (page.nextCursor !== null && page.nextCursor !== undefined) {
        var p = new URLSearchParams(location.search);
        p.set('cursor', idOf(page.nextCursor));
        more.appendChild(el('a', { href: '/console/jobs?' + p.toString(), id: 'next-page', text: 'Older jobs →' }));
      }
    }).catch(function (e) { if (e.message !== 'signed out') flash(e.message, true); });
  }

  // A dry run first, its counts in the confirm step, then the action.
  function act(action, body, what) {
    var dry = Object.assign({}, body, { dryRun: true });
    return api('POST', '/console/api/jobs/' + action, dry).then(function (r) {
      var text;
      if (action === 'retry') {
        text = 'Retry ' + what + ': ' + r.matched + ' match, ' + r.retried + ' would be retried' +
          (r.skippedSent ? ', ' + r.skippedSent + ' skipped (a message was already sent)' : '') +
          (r.skippedInDoubt ? ', ' + r.skippedInDoubt + ' skipped (a message is in doubt: settle first)' : '') + '.';
      } else {
        text = 'Cancel ' + what + ': ' + r.matched + ' match, ' + r.cancelled + ' would be cancelled' +
          (r.running ? ', ' + r.running + ' running would be asked to stop' : '') + '.';
      }
      return confirmStep(text).then(function (yes) {
        if (!yes) { flash('Nothing done.'); return null; }
        return api('POST', '/console/api/jobs/' + action, body).then(function (done) {
          var n = action === 'retry' ? done.retried : done.cancelled;
          route();
          flash((action === 'retry' ? 'Retried ' : 'Cancelled ') + n + ' job(s).');
          return done;
        });
      });
    }).catch(function (e) { if (e.message !== 'signed out') flash(e.message, true); });
  }

  // --- one job -------------------------------------------------------------------------------

  function job(id) {
    main.appendChild(el('p', null, el('a', { href: '/console/jobs', text: '← jobs' })));
    api('GET', '/console/api/jobs/' + encodeURIComponent(id)).then(function (r) {
      var j = r.job;
      var jid = idOf(j.id);
      main.appendChild(el('h1', null, 'Job ' + jid + ' ', el('span', { id: 'job-status' }, statusTag(j.status))));
      var acts = el('div', { class: 'actions' });
      if (j.status === 'failed' || j.status === 'cancelled') acts.appendChild(el('button', { type: 'button', id: 'job-retry', class: 'primary', text: 'Retry' }));
      if (j.status === 'queued' || j.status === 'running') acts.appendChild(el('button', { type: 'button', id: 'job-cancel', class: 'danger', text: 'Cancel' }));
      main.appendChild(acts);
      var b1 = document.getElementById('job-retry');
      if (b1) b1.addEventListener('click', function () { act('retry', { ids: [jid] }, 'job ' + jid); });
      var b2 = document.getElementById('job-cancel');
      if (b2) b2.addEventListener('click', function () { act('cancel', { ids: [jid] }, 'job ' + jid); });

      main.appendChild(el('dl', { class: 'kv', id: 'job-fields' },
        [['requestId', j.requestId], ['idempotencyKey', j.idempotencyKey], ['attempts', j.attempts + (j.maxAttempts ? ' of ' + j.maxAttempts : '')],
          ['last error code', j.lastErrorCode], ['last error', j.lastError], ['run at', when(j.runAt)], ['created', when(j.createdAt)],
          ['started', when(j.startedAt)], ['completed', when(j.completedAt)], ['locked by', j.lockedBy]].map(function (kv) {
          return [el('dt', { text: kv[0] }), el('dd', { text: kv[1] === null || kv[1] === undefined ? '–' : kv[1] })];
        })));

      main.appendChild(el('h2', { text: 'Messages' }));
      var mt = el('table', { id: 'job-messages' }, el('thead', null, el('tr', null,
        ['seq', 'to', 'status', 'fate: sent → delivered → read / failed', 'wamid', ''].map(function (h) { return el('th', { text: h }); }))), el('tbody'));
      (j.messages || []).forEach(function (m) {
        var fate = el('td', { class: 'fate' });
        fate.appendChild(el('span', { text: 'sent ' + when(m.sentAt) }));
        if (m.deliveredAt) fate.appendChild(el('span', { class: 'delivered', text: '→ delivered ' + when(m.deliveredAt) }));
        if (m.readAt) fate.appendChild(el('span', { class: 'read', text: '→ read ' + when(m.readAt) }));
        if (m.status === 'failed') fate.appendChild(el('span', { class: 'failed error', text: '→ failed ' + (m.lastErrorCode || '') + (m.lastError ? ' ' + m.lastError : '') }));
        var settle = el('td');
        if (m.status === 'unknown') {
          [['sent', 'Settle as sent'], ['failed', 'Settle as failed']].forEach(function (s) {
            var b = el('button', { type: 'button', class: 'settle', 'data-as': s[0], text: s[1] });
            b.addEventListener('click', function () {
              confirmStep('Settle message ' + m.seq + ' of job ' + jid + ' as ' + s[0] + '?').then(function (yes) {
                if (!yes) return;
                api('POST', '/console/api/jobs/' + encodeURIComponent(jid) + '/settle', { as: s[0], seq: m.seq })
                  .then(function () { route(); flash('Settled.'); })
                  .catch(function (e) { flash(e.message, true); });
              });
            });
            settle.appendChild(b);
          });
        }
        mt.querySelector('tbody').appendChild(el('tr', { 'data-seq': m.seq, 'data-status': m.status },
          el('td', { text: m.seq }), el('td', { text: m.to }), el('td', null, statusTag(m.status)), fate,
          el('td', { class: 'wrap', text: m.wamid || '–' }), settle));
      });
      if (!(j.messages || []).length) mt.querySelector('tbody').appendChild(el('tr', null, el('td', { colspan: 6, class: 'muted', text: 'no message recorded' })));
      main.appendChild(mt);

      main.appendChild(el('div', { class: 'grid2' },
        el('div', null, el('h2', { text: 'Payload' }), el('pre', { id: 'job-payload', text: JSON.stringify(j.payload, null, 2) })),
        el('div', null, el('h2', { text: 'Composed reply' }), el('pre', { id: 'job-composed', text: j.composed ? JSON.stringify(j.composed, null, 2) : '–' }))));

      main.appendChild(el('h2', { text: 'Timeline' }));
      main.appendChild(el('table', { id: 'job-timeline' }, el('tbody', null, (j.timeline || []).map(function (ev) {
        return el('tr', null, el('td', { text: when(ev.at) }), el('td', { class: 'wrap', text: ev.event }));
      }))));
      main.appendChild(el('h2', { text: 'Operator history' }));
      var hist = Array.isArray(j.history) ? j.history : [];
      main.appendChild(el('table', { id: 'job-history' }, el('tbody', null, hist.length ? hist.map(function (h) {
        return el('tr', null, el('td', { text: when(h.at) }), el('td', { text: h.action }), el('td', { text: 'by ' + h.by }),
          el('td', { class: 'wrap', text: 'was ' + h.status + (h.lastErrorCode ? ' (' + h.lastErrorCode + ')' : '') }));
      }) : el('tr', null, el('td', { class: 'muted', text: 'no operator action' })))));
    }).catch(function (e) { if (e.message !== 'signed out') flash(e.message, true); });
  }

  // --- numbers -------------------------------------------------------------------------------

  function numbers() {
    main.appendChild(el('h1', { text: 'Numbers' }));
    var t = el('table', { id: 'numbers-table' }, el('thead', null, el('tr', null,
      ['number', 'state', 'rate/s', 'pair spacing', 'sent today', 'tier (24 h)', 'pause / resume'].map(function (h) { return el('th', { text: h }); }))), el('tbody'));
    main.appendChild(t);
    api('GET', '/console/api/numbers').then(function (r) {
      var tb = t.querySelector('tbody');
      r.numbers.forEach(function (n) {
        var state = el('td', { class: 'state' });
        if (n.hold) {
          state.appendChild(el('span', { class: 'status failed', text: 'paused' }));
          state.appendChild(el('div', { text: (n.hold.until ? 'until ' + when(n.hold.until) : 'until resumed') + ', by ' + n.hold.by + ': ' + n.hold.reason }));
        } else {
          state.appendChild(el('span', { class: 'status done', text: 'sending' }));
        }
        (n.circuits || []).forEach(function (c) {
          state.appendChild(el('div', { class: 'error', text: c.state + ' on ' + c.runner + ' until ' + when(c.until) + ': ' + c.reason }));
        });
        var tier = n.tier ? (n.tier.recipients + (n.tier.limit ? ' (counted ' + n.tier.counted + ' of ' + n.tier.limit + ')' : '')) : '–';
        var ctl = el('td');
        if (n.configured) {
          if (n.hold) {
            var rb = el('button', { type: 'button', class: 'resume primary', text: 'Resume' });
            rb.addEventListener('click', function () {
              api('POST', '/console/api/numbers/' + encodeURIComponent(n.id) + '/resume', {})
                .then(function (x) { route(); flash('Number ' + n.id + ' resumed; ' + x.jobsDue + ' held job(s) due now.'); })
                .catch(function (e) { flash(e.message, true); });
            });
            ctl.appendChild(rb);
          } else {
            var f = el('input', { class: 'pause-for', size: 6, placeholder: '30m' });
            var why = el('input', { class: 'pause-reason', size: 18, placeholder: 'reason' });
            var pb = el('button', { type: 'button', class: 'pause danger', text: 'Pause' });
            pb.addEventListener('click', function () {
              api('POST', '/console/api/numbers/' + encodeURIComponent(n.id) + '/pause', { 'for': f.value || null, reason: why.value || null })
                .then(function () { route(); flash('Number ' + n.id + ' paused.'); })
                .catch(function (e) { flash(e.message, true); });
            });
            ctl.appendChild(el('span', null, 'for ', f, ' ', why, ' ', pb));
          }
        }
        tb.appendChild(el('tr', { 'data-number': n.id },
          el('td', { text: n.id + (n['default'] ? ' (default)' : '') + (n.configured ? '' : ' (not configured here)') }),
          state,
          el('td', { text: num(n.ratePerSecond) }),
          el('td', { text: n.pairIntervalMs === null || n.pairIntervalMs === undefined ? '–' : n.pairIntervalMs + ' ms' }),
          el('td', { text: num(n.sentToday) }),
          el('td', { text: tier }),
          ctl));
      });
    }).catch(function (e) { if (e.message !== 'signed out') flash(e.message, true); });
  }

  route();
})();
