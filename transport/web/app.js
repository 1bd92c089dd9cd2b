// chorus built-in web client: a small, dependency-free Keyboardia-style step
// sequencer that talks the protocol in shared/PROTOCOL.md (HTTP §1, WebSocket
// §3-§4) plus chorus's additions from DESIGN.md §4: every mutating broadcast
// carries `seq` (a Raft log index, with gaps) and `prevSeq` (the session's
// previous mutating index), the snapshot carries `seq`, and a reconnect can
// ask for `?since=<seq>` and get a `resume` message plus the missed broadcasts.
//
// The server is authoritative: the client never changes its grid optimistically;
// it sends an edit and applies the broadcast that comes back (its own echo too).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  const SAMPLES = [['kick', 'Kick'], ['snare', 'Snare'], ['hihat', 'Hi-hat'],
    ['clap', 'Clap'], ['bass', 'Bass'], ['lead', 'Lead']];
  const MAX_TRACKS = 16;
  const ARRAY_LEN = 128;        // steps and parameterLocks are always 128 long
  const MAX_VISIBLE_STEPS = 32; // longer loops are shown up to step 32
  const UUID_RE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;
  const SESSION_PATH_RE = /^\/s\/([a-f0-9-]{36})\/?$/i;
  const CLOSE_SESSION_GONE = 4404; // chorus: the session was deleted; do not come back

  // Edits the client sends (they get the seq/ack envelope, PROTOCOL.md §3.1).
  // cursor_move and clock_sync_request are sent without it.
  //
  // How each mutating broadcast (§3.3) changes the local state. The server
  // sends its validated, clamped value, so applying it verbatim is right.
  const MUTATIONS = {
    step_toggled: (s, m) => withTrack(s, m, (t) => { t.steps[m.step] = !!m.value; }),
    tempo_changed: (s, m) => { s.tempo = m.tempo; },
    swing_changed: (s, m) => { s.swing = m.swing; },
    track_muted: (s, m) => withTrack(s, m, (t) => { t.muted = !!m.muted; }),
    track_soloed: (s, m) => withTrack(s, m, (t) => { t.soloed = !!m.soloed; }),
    parameter_lock_set: (s, m) => withTrack(s, m, (t) => { t.parameterLocks[m.step] = m.lock ?? null; }),
    track_added: (s, m) => {
      if (!m.track || s.tracks.length >= MAX_TRACKS || s.tracks.some((t) => t.id === m.track.id)) return;
      s.tracks.push(normTrack(m.track));
    },
    track_deleted: (s, m) => { s.tracks = s.tracks.filter((t) => t.id !== m.trackId); },
    track_cleared: (s, m) => withTrack(s, m, (t) => {
      t.steps.fill(false);
      t.parameterLocks.fill(null);
    }),
    track_sample_set: (s, m) => withTrack(s, m, (t) => { t.sampleId = m.sampleId; t.name = m.name; }),
    track_volume_set: (s, m) => withTrack(s, m, (t) => { t.volume = m.volume; }),
    track_transpose_set: (s, m) => withTrack(s, m, (t) => { t.transpose = m.transpose; }),
    track_step_count_set: (s, m) => withTrack(s, m, (t) => { t.stepCount = m.stepCount; }),
    effects_changed: (s, m) => { s.effects = m.effects; },
    fm_params_changed: (s, m) => withTrack(s, m, (t) => { t.fmParams = m.fmParams; }),
  };

  function withTrack(state, msg, fn) {
    const t = state.tracks.find((x) => x.id === msg.trackId);
    if (t) fn(t);
  }

  // Pad the arrays to 128 and fill a missing stepCount, as the real client does (§4.3).
  function normTrack(t) {
    const out = { ...t };
    out.steps = Array.isArray(t.steps) ? t.steps.slice(0, ARRAY_LEN) : [];
    while (out.steps.length < ARRAY_LEN) out.steps.push(false);
    out.parameterLocks = Array.isArray(t.parameterLocks) ? t.parameterLocks.slice(0, ARRAY_LEN) : [];
    while (out.parameterLocks.length < ARRAY_LEN) out.parameterLocks.push(null);
    if (out.stepCount == null) out.stepCount = 16;
    return out;
  }

  function normState(st) {
    st = st || {};
    return { ...st, tracks: (st.tracks || []).map(normTrack), tempo: st.tempo ?? 120, swing: st.swing ?? 0 };
  }

  const visibleSteps = (t) => Math.max(1, Math.min(t.stepCount || 16, MAX_VISIBLE_STEPS));

  // ---------------------------------------------------------------- HTTP ----

  // What we know about the cluster from GET /cluster/status (DESIGN.md §7).
  const cluster = { pageNodeId: null, members: [] };

  function fetchTimeout(url, opts = {}, ms = 10000) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), ms);
    return fetch(url, { ...opts, signal: ctl.signal }).finally(() => clearTimeout(timer));
  }

  const httpBase = (host) => `${location.protocol}//${host}`;

  // A cluster member's httpAddr as a host usable from this browser: a
  // wildcard or empty listen host ("0.0.0.0:8081", ":8081") means "the host
  // the page came from".
  function normAddr(addr) {
    const m = /^(.*):(\d+)$/.exec(addr || '');
    if (!m) return addr || '';
    const h = m[1];
    if (h === '' || h === '0.0.0.0' || h === '[::]' || h === '::') return `${location.hostname}:${m[2]}`;
    return addr;
  }

  // /api calls go to the page's own origin. On a network failure or a
  // retryable status they are retried (up to 3 times, §4.12), moving on to the
  // other cluster members (the /api routes allow any origin).
  async function api(path, opts = {}) {
    let lastErr = null;
    for (let attempt = 0; attempt < 4; attempt++) {
      if (attempt > 0) await sleep(backoff(attempt - 1, 4000));
      const bases = [''].concat(otherHosts().map(httpBase)); // members may have arrived meanwhile
      const base = bases[attempt % bases.length];
      try {
        const r = await fetchTimeout(base + path, opts);
        if (![408, 429, 500, 502, 503, 504].includes(r.status)) return r;
        lastErr = new Error(`HTTP ${r.status}`);
      } catch (e) {
        lastErr = e;
      }
    }
    throw lastErr;
  }

  const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

  // min(1000·2^n, cap) with ±25% jitter.
  function backoff(n, cap) {
    const base = Math.min(1000 * 2 ** n, cap);
    return Math.round(base * (0.75 + Math.random() * 0.5));
  }

  // GET /cluster/status from host (default: the page's origin). A node other
  // than the page's may refuse the cross-origin read; then ask our own origin.
  // Returns the node id of `host` when it can tell.
  async function refreshCluster(host) {
    const urls = [];
    if (host && host !== location.host) urls.push(httpBase(host) + '/cluster/status');
    urls.push('/cluster/status');
    for (const url of urls) {
      try {
        const r = await fetchTimeout(url, {}, 4000);
        if (!r.ok) continue;
        const st = await r.json();
        if (Array.isArray(st.members)) cluster.members = st.members;
        const own = url.startsWith('/');
        if (own) cluster.pageNodeId = st.id;
        if (!own || !host || host === location.host) return st.id; // the id of `host` itself
        break; // our origin answered for another node: look `host` up in members
      } catch (e) { /* try the next one */ }
    }
    return nodeIdOf(host);
  }

  function nodeIdOf(host) {
    if (host === location.host && cluster.pageNodeId) return cluster.pageNodeId;
    const m = cluster.members.find((x) => normAddr(x.httpAddr) === host);
    return m ? m.id : null;
  }

  // Every node's host, in member order, with the page's own node written as
  // location.host (it may be named differently in httpAddr). Never empty.
  function allHosts() {
    const out = [];
    const add = (h) => { if (h && !out.includes(h)) out.push(h); };
    if (!cluster.pageNodeId || !cluster.members.some((m) => m.id === cluster.pageNodeId)) add(location.host);
    for (const m of cluster.members) add(m.id === cluster.pageNodeId ? location.host : normAddr(m.httpAddr));
    return out;
  }
  const otherHosts = () => allHosts().filter((h) => h !== location.host);

  // ------------------------------------------------------------- session ----

  // Everything about the open session. Replaced on a deliberate switch, which
  // is the only time lastSeq, clientSeq and lastSnapshotTs start again (§4.11).
  let sess = null;

  function newSess(id) {
    return {
      id,
      state: null,          // SessionState, normalised
      haveState: false,     // a snapshot (not just the HTTP GET) has been applied
      lastSeq: 0,           // last server seq applied (the `ack`)
      lastSnapshotTs: 0,
      clientSeq: 0,         // our envelope `seq`
      replayUntil: 0,       // after `resume`: broadcasts up to this seq are replays
      snapshotRequested: false,
      playerId: null,
      players: [],
      playing: new Set(),
      immutable: false,
      status: 'disconnected',
      everJoined: false,
      ws: null,
      host: location.host,  // the node the socket goes to
      attempt: 0,
      reconnectTimer: null,
      clockTimer: null,
      closed: false,
    };
  }

  async function openSession(id) {
    if (sess && sess.id === id && !sess.closed) return;
    closeSession();
    const my = (sess = newSess(id));
    show('session');
    $('session-title').textContent = id.slice(0, 8);
    setStatus('connecting');
    render();
    let r;
    try {
      r = await api(`/api/sessions/${id}`);
    } catch (e) {
      if (sess !== my) return;
      showError(`Could not load the session: ${e.message}`);
      setStatus('disconnected');
      return;
    }
    if (sess !== my) return;
    if (r.status === 404 || r.status === 400) {
      closeSession();
      show('notfound');
      return;
    }
    if (!r.ok) {
      showError(`Could not load the session: HTTP ${r.status}`);
      setStatus('disconnected');
      return;
    }
    const body = await r.json();
    if (sess !== my) return;
    // Show the stored state at once; the WebSocket snapshot replaces it.
    my.state = normState(body.state);
    my.immutable = !!body.immutable;
    if (body.name) $('session-title').textContent = body.name;
    render();
    refreshCluster().then(() => { if (sess === my) renderNode(); });
    connect();
  }

  // A deliberate disconnect: close with 1000, which means "do not reconnect".
  function closeSession() {
    if (!sess) return;
    const s = sess;
    s.closed = true;
    clearTimeout(s.reconnectTimer);
    clearInterval(s.clockTimer);
    if (s.ws) s.ws.close(1000, 'Client disconnect');
    stopPlayhead();
    sess = null;
    clearCursors();
    gridKey = '';
  }

  // ----------------------------------------------------------- WebSocket ----

  function connect() {
    const my = sess;
    clearTimeout(my.reconnectTimer);
    setStatus(my.everJoined ? 'reconnecting' : 'connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Only a client holding a snapshot's state can resume from its seq.
    const since = my.haveState ? `?since=${my.lastSeq}` : '';
    const url = `${proto}//${my.host}/api/sessions/${my.id}/ws${since}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect(my);
      return;
    }
    my.ws = ws;
    const current = () => sess === my && my.ws === ws;
    // A node that neither accepts nor refuses (a partition) would leave us
    // "connecting" for the browser's long timeout; give up sooner.
    const openTimer = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, 8000);

    ws.onopen = () => {
      clearTimeout(openTimer);
      if (!current()) return;
      // Clock sync on open and every 5 s (§4.7); the RTT is shown next to the node.
      sendClockSync();
      my.clockTimer = setInterval(sendClockSync, 5000);
      renderNode();
      refreshCluster(my.host).then((nodeId) => { if (current()) renderNode(nodeId); });
    };
    ws.onmessage = (ev) => { if (current()) onMessage(ev.data); };
    ws.onclose = (ev) => {
      clearTimeout(openTimer);
      if (!current()) return;
      clearInterval(my.clockTimer);
      my.ws = null;
      my.snapshotRequested = false;
      my.replayUntil = 0;
      clearCursors();
      if (ev.code === 1000) {
        setStatus('disconnected');
      } else if (ev.code === CLOSE_SESSION_GONE) {
        setStatus('disconnected');
        showError('This session was deleted.');
      } else {
        scheduleReconnect(my);
      }
    };
  }

  // Reconnect after min(1000·2^n, 10000) ms ±25%, each time to the next node
  // of the cluster (the current one included, in turn). The attempt counter
  // is reset once a socket has actually joined (snapshot or resume), so a node
  // that accepts and then drops us at once does not cause a tight loop.
  function scheduleReconnect(my) {
    setStatus('reconnecting');
    const delay = backoff(my.attempt++, 10000);
    const hosts = allHosts();
    my.host = hosts[(hosts.indexOf(my.host) + 1) % hosts.length];
    my.reconnectTimer = setTimeout(() => { if (sess === my) connect(); }, delay);
  }

  // Send a message on the open socket. Messages that change state or ask for
  // one get the envelope: `seq` (ours, never reset on reconnect) and `ack`
  // (the last server seq applied).
  function send(msg, envelope = true) {
    const ws = sess && sess.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    if (envelope) {
      msg.seq = ++sess.clientSeq;
      msg.ack = sess.lastSeq;
    }
    ws.send(JSON.stringify(msg));
    return true;
  }

  // Edits are only forwarded once the session is joined and editable.
  const canEdit = () => !!sess && sess.status === 'connected' && !sess.immutable && !!sess.state;
  function sendEdit(msg) { if (canEdit()) send(msg); }

  const sendClockSync = () => send({ type: 'clock_sync_request', clientTime: Date.now() }, false);

  function requestSnapshot() {
    if (sess.snapshotRequested) return; // one outstanding request is enough
    sess.snapshotRequested = send({ type: 'request_snapshot' });
  }

  function onMessage(data) {
    if (data === 'pong') return;
    let m;
    try { m = JSON.parse(data); } catch (e) { return; }
    if (!m || typeof m.type !== 'string') return;
    if (MUTATIONS[m.type]) { onMutation(m); return; }
    switch (m.type) {
      case 'snapshot': onSnapshot(m); break;
      case 'resume': onResume(m); break;
      case 'player_joined':
        if (m.player && !sess.players.some((p) => p.id === m.player.id)) sess.players.push(m.player);
        break;
      case 'player_left':
        sess.players = sess.players.filter((p) => p.id !== m.playerId);
        sess.playing.delete(m.playerId);
        removeCursor(m.playerId);
        break;
      case 'playback_started': sess.playing.add(m.playerId); break;
      case 'playback_stopped': sess.playing.delete(m.playerId); break;
      case 'cursor_moved': drawCursor(m); return;
      case 'clock_sync_response':
        $('rtt').textContent = `${Math.max(0, Date.now() - m.clientTime)} ms`;
        return;
      case 'state_mismatch': requestSnapshot(); return;
      case 'error':
        if (m.code === 'SESSION_PUBLISHED') sess.immutable = true;
        showError(m.message || 'Server error');
        break;
      default: return; // state_hash_match, and anything newer than this client
    }
    render();
  }

  // Who we are and who is here: common to snapshot and resume.
  function applyPresence(m) {
    sess.playerId = m.playerId;
    sess.players = Array.isArray(m.players) ? m.players.slice() : [];
    sess.playing = new Set(m.playingPlayerIds || []);
    sess.immutable = !!m.immutable;
    const here = new Set(sess.players.map((p) => p.id));
    for (const id of cursorEls.keys()) if (!here.has(id)) removeCursor(id);
  }

  function joined() {
    sess.status = 'connected';
    sess.everJoined = true;
    sess.attempt = 0;
    setStatus('connected');
    // A reconnect is a new player: tell the room again that we are playing.
    if (playhead.timer) send({ type: 'play' });
  }

  function onSnapshot(m) {
    sess.snapshotRequested = false;
    sess.replayUntil = 0;
    applyPresence(m);
    const ts = m.snapshotTimestamp || 0;
    const seq = typeof m.seq === 'number' ? m.seq : null;
    if (ts < sess.lastSnapshotTs) {
      console.warn('chorus: ignoring a snapshot older than the last one applied', ts, sess.lastSnapshotTs);
    } else if (seq !== null && sess.haveState && seq < sess.lastSeq) {
      // seq never goes down (DESIGN.md I1), so this state is older than what
      // we have already applied; taking it would undo those broadcasts.
      console.warn('chorus: ignoring a snapshot behind the last applied seq', seq, sess.lastSeq);
    } else {
      sess.lastSnapshotTs = ts;
      sess.state = normState(m.state);
      sess.haveState = true;
      if (seq !== null) sess.lastSeq = seq;
    }
    joined();
    render();
  }

  // chorus sends `resume` instead of a snapshot when we connected with
  // ?since=N and it can replay: the missed broadcasts (seq in (N, m.seq])
  // follow in order, and our state is still the right base for them.
  function onResume(m) {
    applyPresence(m);
    if (m.since !== sess.lastSeq) console.warn('chorus: resume from', m.since, 'but our seq is', sess.lastSeq);
    sess.replayUntil = m.seq > sess.lastSeq ? m.seq : 0;
    joined();
    render();
  }

  function onMutation(m) {
    if (typeof m.seq === 'number') {
      if (sess.haveState && m.seq <= sess.lastSeq) return; // already in our state
      const replay = sess.replayUntil > 0 && m.seq <= sess.replayUntil;
      if (!replay && sess.haveState) {
        // prevSeq names the session's previous mutating entry. If we have not
        // seen it, a broadcast for this session was lost: resync. (Without
        // prevSeq, fall back to the original client's rule of a jump > 3.)
        const gap = typeof m.prevSeq === 'number'
          ? m.prevSeq > sess.lastSeq
          : sess.lastSeq > 0 && m.seq - sess.lastSeq - 1 > 3;
        if (gap) {
          console.warn('chorus: missed broadcasts between', sess.lastSeq, 'and', m.seq);
          requestSnapshot();
        }
      }
      sess.lastSeq = m.seq;
      if (m.seq >= sess.replayUntil) sess.replayUntil = 0;
    }
    if (sess.state) MUTATIONS[m.type](sess.state, m);
    render();
  }

  // -------------------------------------------------------------- render ----

  let renderQueued = false;
  // Coalesce the renders of one burst of messages into one (microtasks are
  // not throttled in background tabs, unlike timers and animation frames).
  function render() {
    if (renderQueued) return;
    renderQueued = true;
    queueMicrotask(() => { renderQueued = false; renderNow(); });
  }

  function renderNow() {
    if (!sess) return;
    renderGrid();
    renderPlayers();
    const st = sess.state;
    if (st) {
      const tempo = $('tempo');
      const slider = $('tempo-slider');
      // Do not overwrite a number the user is typing, or a slider being dragged.
      if (document.activeElement !== tempo) tempo.value = st.tempo;
      if (document.activeElement !== slider) slider.value = st.tempo;
      $('swing').textContent = st.swing;
    }
    const edit = canEdit();
    for (const id of ['tempo', 'tempo-slider', 'sample']) $(id).disabled = !edit;
    $('add-track').disabled = !edit || !st || st.tracks.length >= MAX_TRACKS;
    $('published').hidden = !sess.immutable;
    $('seq').textContent = String(sess.lastSeq);
  }

  // The grid is rebuilt only when its shape changes (tracks added, removed,
  // renamed, resized, editability); otherwise only the cells' `on` classes are
  // updated, so a click is never lost to a rebuild under the pointer.
  let gridKey = '';
  let cells = []; // cells[trackIndex][step]

  function renderGrid() {
    const grid = $('grid');
    const tracks = sess.state ? sess.state.tracks : [];
    const cols = Math.max(16, ...tracks.map(visibleSteps));
    const edit = canEdit();
    const key = JSON.stringify([cols, edit, tracks.map((t) => [t.id, visibleSteps(t), t.name, t.sampleId, !!t.muted])]);
    if (key !== gridKey) {
      gridKey = key;
      grid.style.setProperty('--cols', cols);
      grid.classList.toggle('readonly', !edit);
      grid.replaceChildren();
      cells = [];
      if (tracks.length === 0) {
        grid.append(el('div', 'empty', sess.state ? 'No tracks yet. Pick a sample and add one.' : 'Loading…'));
      }
      tracks.forEach((t, ti) => {
        const row = el('div', 'row' + (t.muted ? ' muted' : ''));
        row.id = `track-${ti}`;
        row.dataset.trackId = t.id;
        const name = el('div', 'name', t.name || t.id);
        name.title = `${t.name} (${t.sampleId})`;
        name.append(el('small', '', t.sampleId));
        row.append(name);
        const rowCells = [];
        for (let i = 0; i < cols; i++) {
          if (i >= visibleSteps(t)) { row.append(el('span', 'pad')); continue; }
          const c = el('button', 'step' + (i % 4 === 0 ? ' beat' : ''));
          c.type = 'button';
          c.id = `step-${ti}-${i}`;
          c.dataset.trackId = t.id;
          c.dataset.step = i;
          c.title = `${t.name} step ${i + 1}`;
          c.disabled = !edit;
          row.append(c);
          rowCells.push(c);
        }
        const del = el('button', 'del', '×');
        del.type = 'button';
        del.id = `delete-${ti}`;
        del.dataset.trackId = t.id;
        del.title = `Delete ${t.name}`;
        del.disabled = !edit;
        row.append(del);
        grid.append(row);
        cells.push(rowCells);
      });
    }
    tracks.forEach((t, ti) => cells[ti].forEach((c, i) => c.classList.toggle('on', !!t.steps[i])));
  }

  function renderPlayers() {
    const list = $('players');
    list.replaceChildren(...sess.players.map((p) => {
      const li = el('li');
      li.dataset.playerId = p.id;
      const dot = el('span', 'dot');
      dot.style.background = p.color || '#888';
      li.append(dot, el('span', 'pname', p.name || p.id));
      if (p.id === sess.playerId) li.append(el('span', 'me', '(you)'));
      if (sess.playing.has(p.id)) li.append(el('span', 'playing', '▶'));
      return li;
    }));
  }

  function renderNode(nodeId) {
    if (!sess) return;
    const id = nodeId || nodeIdOf(sess.host);
    $('node').textContent = id ? `${id} · ${sess.host}` : sess.host;
  }

  function setStatus(s) {
    if (sess) sess.status = s;
    const st = $('status');
    st.textContent = s;
    st.dataset.state = s;
    if (s !== 'connected') $('rtt').textContent = '';
    render();
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  let errorTimer = null;
  function showError(text) {
    const e = $('error');
    e.textContent = text;
    e.hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(() => { e.hidden = true; }, 8000);
  }

  function show(view) {
    for (const v of ['landing', 'notfound', 'session']) $(v).hidden = v !== view;
    if (view !== 'session') {
      $('session-title').textContent = '';
      $('published').hidden = true;
      $('seq').textContent = '0';
      $('node').textContent = '–';
      $('rtt').textContent = '';
      const st = $('status');
      st.textContent = st.dataset.state = 'disconnected';
    }
  }

  // ------------------------------------------------------------- cursors ----

  const cursorEls = new Map(); // playerId -> label element

  function drawCursor(m) {
    if (!m.position || m.playerId === sess.playerId) return;
    let c = cursorEls.get(m.playerId);
    if (!c) {
      c = el('div', 'cursor');
      c.dataset.playerId = m.playerId;
      cursorEls.set(m.playerId, c);
      $('cursors').append(c);
    }
    c.textContent = m.name || 'player';
    c.style.background = m.color || '#888';
    c.style.left = `${clampPct(m.position.x)}%`;
    c.style.top = `${clampPct(m.position.y)}%`;
  }

  const clampPct = (v) => Math.min(100, Math.max(0, Number(v) || 0));

  function removeCursor(id) {
    const c = cursorEls.get(id);
    if (c) c.remove();
    cursorEls.delete(id);
  }

  function clearCursors() {
    for (const id of [...cursorEls.keys()]) removeCursor(id);
  }

  // Send our pointer position over the grid, at most one message per 50 ms;
  // the last position of a burst is sent when the 50 ms are up.
  let lastCursorAt = 0;
  let cursorTimer = null;
  let pendingPos = null;

  function onPointerMove(ev) {
    if (!sess || sess.status !== 'connected') return;
    const r = $('grid-wrap').getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return;
    const pct = (v) => Math.round(clampPct(v) * 100) / 100;
    pendingPos = { x: pct(((ev.clientX - r.left) / r.width) * 100), y: pct(((ev.clientY - r.top) / r.height) * 100) };
    const wait = 50 - (Date.now() - lastCursorAt);
    if (wait <= 0) flushCursor();
    else if (!cursorTimer) cursorTimer = setTimeout(flushCursor, wait);
  }

  function flushCursor() {
    cursorTimer = null;
    if (!pendingPos || !sess || sess.status !== 'connected') return;
    lastCursorAt = Date.now();
    send({ type: 'cursor_move', position: pendingPos }, false);
    pendingPos = null;
  }

  // ------------------------------------------------------------ playhead ----
  // "Play" has no audio here: it tells the room we are playing (the avatar
  // badge, §4.5) and sweeps a playhead over the grid at the session tempo.

  const playhead = { timer: null, tick: 0, lit: [] };

  function startPlayhead() {
    playhead.tick = 0;
    const step = () => {
      for (const c of playhead.lit) c.classList.remove('ph');
      playhead.lit = [];
      const tracks = sess && sess.state ? sess.state.tracks : [];
      tracks.forEach((t, ti) => {
        const c = cells[ti] && cells[ti][playhead.tick % (t.stepCount || 16)];
        if (c) { c.classList.add('ph'); playhead.lit.push(c); }
      });
      playhead.tick++;
      const tempo = (sess && sess.state && sess.state.tempo) || 120;
      playhead.timer = setTimeout(step, 60000 / tempo / 4); // sixteenth notes
    };
    step();
    $('play').textContent = '■ Stop';
    $('play').classList.add('playing');
  }

  function stopPlayhead() {
    clearTimeout(playhead.timer);
    playhead.timer = null;
    for (const c of playhead.lit) c.classList.remove('ph');
    playhead.lit = [];
    $('play').textContent = '▶ Play';
    $('play').classList.remove('playing');
  }

  // ------------------------------------------------------------- actions ----

  let lastTrackTs = 0;

  function addTrack() {
    if (!canEdit() || sess.state.tracks.length >= MAX_TRACKS) return;
    const sampleId = $('sample').value;
    const label = (SAMPLES.find(([id]) => id === sampleId) || [sampleId, sampleId])[1];
    // "track-" + Date.now(), kept unique when two adds share a millisecond.
    const ts = Math.max(Date.now(), lastTrackTs + 1);
    lastTrackTs = ts;
    sendEdit({
      type: 'add_track',
      track: {
        id: `track-${ts}`, name: label, sampleId,
        steps: Array(ARRAY_LEN).fill(false), parameterLocks: Array(ARRAY_LEN).fill(null),
        volume: 1, muted: false, soloed: false, playbackMode: 'oneshot', transpose: 0, stepCount: 16,
      },
    });
  }

  // Tempo: typing sends once the number is in range and has settled (so
  // "1", "12" on the way to "120" are never sent and clamped to 60); a change
  // event (Enter, blur, slider release) sends at once, clamped.
  let tempoTimer = null;

  function sendTempo(v) {
    clearTimeout(tempoTimer);
    if (!canEdit() || !Number.isFinite(v)) return;
    v = Math.min(180, Math.max(60, v));
    if (v !== sess.state.tempo) sendEdit({ type: 'set_tempo', tempo: v });
  }

  function queueTempo(v) {
    clearTimeout(tempoTimer);
    if (Number.isFinite(v) && v >= 60 && v <= 180) tempoTimer = setTimeout(() => sendTempo(v), 250);
  }

  async function createSession(button) {
    button.disabled = true;
    try {
      const r = await api('/api/sessions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ state: { tracks: [], tempo: 120, swing: 0, version: 1 } }),
      });
      if (!r.ok) {
        const err = await r.json().catch(() => ({}));
        throw new Error(err.error || `HTTP ${r.status}`);
      }
      const { id } = await r.json();
      history.pushState({}, '', `/s/${id}`);
      await openSession(id);
    } catch (e) {
      showError(`Could not create a session: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function route() {
    const m = SESSION_PATH_RE.exec(location.pathname);
    if (m) {
      openSession(m[1].toLowerCase());
    } else {
      closeSession();
      show('landing');
    }
  }

  // ---------------------------------------------------------------- wire ----

  function init() {
    $('sample').replaceChildren(...SAMPLES.map(([id, label]) => {
      const o = el('option', '', label);
      o.value = id;
      return o;
    }));

    $('new-session').addEventListener('click', (ev) => createSession(ev.currentTarget));
    $('create-new').addEventListener('click', (ev) => createSession(ev.currentTarget));
    $('join-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const m = UUID_RE.exec($('join-input').value);
      if (!m) { showError('That does not contain a session id.'); return; }
      const id = m[0].toLowerCase();
      history.pushState({}, '', `/s/${id}`);
      openSession(id);
    });
    $('home').addEventListener('click', (ev) => {
      ev.preventDefault();
      if (location.pathname !== '/') history.pushState({}, '', '/');
      route();
    });
    window.addEventListener('popstate', route);

    $('grid').addEventListener('click', (ev) => {
      const cell = ev.target.closest('.step');
      if (cell) {
        sendEdit({ type: 'toggle_step', trackId: cell.dataset.trackId, step: Number(cell.dataset.step) });
        return;
      }
      const del = ev.target.closest('.del');
      if (del) sendEdit({ type: 'delete_track', trackId: del.dataset.trackId });
    });
    $('grid-wrap').addEventListener('mousemove', onPointerMove);
    $('add-track').addEventListener('click', addTrack);

    const tempo = $('tempo');
    const slider = $('tempo-slider');
    tempo.addEventListener('input', () => queueTempo(tempo.valueAsNumber));
    tempo.addEventListener('change', () => sendTempo(tempo.valueAsNumber));
    slider.addEventListener('input', () => { tempo.value = slider.value; queueTempo(slider.valueAsNumber); });
    slider.addEventListener('change', () => sendTempo(slider.valueAsNumber));

    $('play').addEventListener('click', () => {
      if (!sess) return;
      if (playhead.timer) { stopPlayhead(); send({ type: 'stop' }); } else { startPlayhead(); send({ type: 'play' }); }
    });

    refreshCluster(); // learn the other nodes early: HTTP fallback and reconnects use them
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
