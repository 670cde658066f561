/*
 * The Eye's browser snippet, served by the bridge at /v1/eye.js.
 *
 *   <script src="https://eye.example.com/v1/eye.js" data-api-key="KEY" async></script>
 *   eye.track('page interaction', 'cta click', { ...eye.page(), element: 'chat bubble' });
 *
 * Each event gets its event_id (a UUID) here, when it happens, so every resend is the same event
 * and the tables keep it once. Events wait in sessionStorage until the bridge answers 202, so a
 * reload, a navigation or a bridge away for a while loses nothing; they leave in batches, one
 * request at a time, in the order they happened. A session is one per tab and site, and a new one
 * starts after `sessionIdleMinutes` without an event.
 *
 * Options (defaults in init below): data-* attributes of the script tag (data-api-key,
 * data-session-idle-minutes, data-batch-size, …), or eye.init({apiKey, ...}) for a snippet loaded
 * without data-api-key.
 */
(function () {
  'use strict';

  var STORAGE = 'eye.';
  var script = document.currentScript;

  function storage() {
    try {
      return window.sessionStorage;
    } catch (blocked) {
      return null;
    }
  }

  function load(key, fallback) {
    var store = storage();
    try {
      var text = store && store.getItem(STORAGE + key);
      return text ? JSON.parse(text) : fallback;
    } catch (unreadable) {
      return fallback;
    }
  }

  function save(key, value) {
    var store = storage();
    try {
      if (store) store.setItem(STORAGE + key, JSON.stringify(value));
    } catch (full) {
      // Storage full or blocked: the events stay in memory for this page.
    }
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) {
      return (b + 0x100).toString(16).slice(1);
    }).join('');
    return hex.slice(0, 8) + '-' + hex.slice(8, 12) + '-' + hex.slice(12, 16) + '-' +
      hex.slice(16, 20) + '-' + hex.slice(20);
  }

  var options = null;
  // Events not yet acknowledged, oldest first; the first `inFlight` of them are being sent.
  var queue = [];
  var inFlight = 0;
  // Lowered when the bridge refuses a batch as too large, so that one event fails alone.
  var batchLimit = Infinity;
  var failures = 0;
  var timer = null;
  var reachable = true;

  function sessionId() {
    var now = Date.now();
    var session = load('session', null);
    if (!session || now - session.lastEventAt > options.sessionIdleMinutes * 60000) {
      session = { id: uuid(), lastEventAt: now };
    }
    session.lastEventAt = now;
    save('session', session);
    return session.id;
  }

  function persist() {
    save('queue', queue);
  }

  function url() {
    var separator = options.endpoint.indexOf('?') < 0 ? '?' : '&';
    return options.endpoint + separator + 'api_key=' + encodeURIComponent(options.apiKey);
  }

  function schedule(delayMs) {
    if (timer !== null) return;
    timer = setTimeout(function () {
      timer = null;
      flush();
    }, delayMs);
  }

  function retryDelay(retryAfterSeconds) {
    failures += 1;
    var backoff = Math.min(options.maxRetryDelayMs, 500 * Math.pow(2, failures - 1));
    var jittered = backoff / 2 + Math.random() * backoff / 2;
    return Math.max(jittered, (retryAfterSeconds || 0) * 1000);
  }

  /* Sends the oldest batch; the next goes once this one is answered, so events arrive in order. */
  function flush() {
    if (!options || inFlight > 0 || queue.length === 0) return;
    if (navigator.onLine === false) return; // the `online` event flushes
    inFlight = Math.min(queue.length, options.batchSize, batchLimit);
    var batch = queue.slice(0, inFlight);
    // text/plain keeps the request "simple" (no CORS preflight); the bridge reads it as JSON.
    fetch(url(), {
      method: 'POST',
      headers: { 'Content-Type': 'text/plain' },
      body: JSON.stringify(batch),
      keepalive: true
    }).then(function (response) {
      var sent = inFlight;
      inFlight = 0;
      reachable = true;
      if (response.status === 202) {
        failures = 0;
        batchLimit = Infinity;
        queue.splice(0, sent);
        persist();
        if (queue.length > 0) schedule(0);
      } else if (response.status === 413 && sent > 1) {
        batchLimit = Math.ceil(sent / 2);
        schedule(0);
      } else if (response.status === 429 || response.status === 408 || response.status >= 500) {
        schedule(retryDelay(Number(response.headers.get('Retry-After'))));
      } else {
        // The bridge refused the batch for good (a bad key, an event too large): resending it
        // cannot succeed, and keeping it would hold back every later event.
        console.warn('eye: the bridge refused ' + sent + ' events with ' + response.status);
        queue.splice(0, sent);
        persist();
        schedule(0);
      }
    }, function () {
      inFlight = 0;
      reachable = false;
      schedule(retryDelay(0));
    });
  }

  /* The page is going away: hand what is queued to the browser, which sends it after unload.
   * Those events stay stored as unconfirmed: the next page of this tab sends them again (the same
   * event_ids), unless the bridge has confirmed them meanwhile. */
  function flushOnExit() {
    if (!options || queue.length === 0 || !reachable || !navigator.sendBeacon) return;
    var body = JSON.stringify(queue.slice(0, options.batchSize));
    // The queue stays stored as it is (every change to it is): the beacon's events are
    // unconfirmed until a 202.
    navigator.sendBeacon(url(), new Blob([body], { type: 'text/plain' }));
  }

  function track(category, name, data) {
    if (!options) throw new Error('eye: call eye.init({apiKey: ...}) or set data-api-key first');
    queue.push({
      event_id: uuid(),
      session_id: sessionId(),
      category: String(category),
      name: String(name),
      timestamp: new Date().toISOString(),
      data: data || {}
    });
    if (queue.length > options.maxQueuedEvents) {
      queue.splice(inFlight, queue.length - options.maxQueuedEvents);
      console.warn('eye: more than ' + options.maxQueuedEvents + ' events waiting; dropped the oldest');
    }
    persist();
    if (queue.length - inFlight >= options.batchSize) flush();
    else schedule(options.flushIntervalMs);
  }

  function page() {
    return { host: location.host, path: location.pathname };
  }

  function init(given) {
    var scriptOrigin = script ? new URL(script.src, location.href).origin : location.origin;
    var defaults = {
      apiKey: null,
      endpoint: scriptOrigin + '/v1/events',
      sessionIdleMinutes: 30,
      autoPageview: true,
      batchSize: 20,
      flushIntervalMs: 1000,
      maxQueuedEvents: 1000,
      maxRetryDelayMs: 30000
    };
    options = {};
    for (var key in defaults) {
      options[key] = given[key] !== undefined ? given[key] : defaults[key];
    }
    if (!options.apiKey) throw new Error('eye: apiKey is required');
    // What an earlier page of this tab left unconfirmed goes first, in its order.
    queue = load('queue', []).concat(queue);
    addEventListener('pagehide', flushOnExit);
    document.addEventListener('visibilitychange', function () {
      if (document.visibilityState === 'hidden') flushOnExit();
    });
    addEventListener('online', flush);
    if (options.autoPageview) track('page interaction', 'pageview', page());
    else flush();
    return api;
  }

  var api = { init: init, track: track, page: page, flush: flush };
  window.eye = api;

  if (script && script.dataset.apiKey) {
    // data-session-idle-minutes is dataset.sessionIdleMinutes: the option of that name.
    var given = {};
    for (var name in script.dataset) {
      var text = script.dataset[name];
      given[name] = text === 'true' ? true : text === 'false' ? false :
        text !== '' && !isNaN(Number(text)) && name !== 'apiKey' ? Number(text) : text;
    }
    init(given);
  }
})();
