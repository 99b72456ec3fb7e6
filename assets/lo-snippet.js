/*! ghl-sync · Lucky Orange bridge snippet (served at /lo/snippet.js; no dependencies).
 *
 * Put it in <head>, as a plain (not async, not defer) script, BEFORE the Lucky Orange tag:
 *   <script src="https://SYNC.EXAMPLE.COM/lo/snippet.js"></script>
 *   <script async defer src="https://tools.luckyorange.com/core/lo.js?site-id=SITE-ID"></script>
 *
 * What it does:
 * 1. Removes `lo_t` (the identity token from GHL email/SMS links) from the address bar at once,
 *    before Lucky Orange or analytics can record the URL, and keeps it in sessionStorage for
 *    the visit.
 * 2. Unless the visitor opted out of Lucky Orange (`lo-opt-out` cookie), asks the daemon who the
 *    token belongs to (POST /lo/identity). On 200 it queues, through window.LOQ,
 *    LO.visitor.identify(contactId, traits) and LO.events.track('ghl_identified'), then reports
 *    the visit (page path, referrer host, Lucky Orange's visit count and session id).
 * 3. On every form submit, fills a hidden input named `lo_session_url` with the Lucky Orange
 *    session replay URL (map it to a GHL contact custom field).
 * 4. Offers ghlSync.track(name, meta) for journey events (names allow-listed in the daemon).
 * It never throws: blocked or absent Lucky Orange, an opted-out visitor, a 204 answer or an
 * unreachable daemon all end quietly. Consent managers: load this script only after consent.
 */
(function (w, d) {
  'use strict';
  var KEY = 'ghl_sync_lo_t';
  var noop = function () {};
  var api = (w.ghlSync = w.ghlSync || {});
  api.track = noop;
  w.LOQ = w.LOQ || [];
  var base = '';
  var t = null;
  try {
    var me = d.currentScript && d.currentScript.src;
    if (me) base = me.replace(/\/lo\/snippet\.js(?:[?#].*)?$/, '');
  } catch (e) {}
  try {
    var url = new URL(w.location.href);
    t = url.searchParams.get('lo_t');
    if (t !== null) {
      url.searchParams.delete('lo_t');
      w.history.replaceState(w.history.state, '', url.pathname + url.search + url.hash);
    }
  } catch (e) {}
  try {
    if (t) w.sessionStorage.setItem(KEY, t);
    else t = w.sessionStorage.getItem(KEY);
  } catch (e) {}

  function optedOut() {
    return /(?:^|;\s*)lo-opt-out=/.test(d.cookie);
  }
  function sessionId() {
    try {
      var s = JSON.parse(w.localStorage.getItem('lo-session') || 'null');
      var id = s && s.id ? String(s.id) : '';
      return /^[A-Za-z0-9_-]{1,128}$/.test(id) ? id : null;
    } catch (e) {
      return null;
    }
  }
  function replayUrl() {
    var id = sessionId();
    return id ? 'https://app.luckyorange.com/visitors/sessions/' + id + '/timeline' : null;
  }
  function visitCount() {
    var m = /(?:^|;\s*)lo-visits=(\d+)/.exec(d.cookie);
    return m ? Number(m[1]) : null;
  }
  function referrerHost() {
    try {
      return d.referrer ? new URL(d.referrer).host : null;
    } catch (e) {
      return null;
    }
  }
  function post(path, body) {
    if (!base || !w.fetch) return Promise.resolve(null);
    try {
      return w
        .fetch(base + path, {
          method: 'POST',
          mode: 'cors',
          credentials: 'omit',
          keepalive: true,
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        })
        .catch(function () {
          return null;
        });
    } catch (e) {
      return Promise.resolve(null);
    }
  }

  d.addEventListener(
    'submit',
    function (ev) {
      try {
        var field = ev.target && ev.target.querySelector && ev.target.querySelector('input[name="lo_session_url"]');
        var replay = replayUrl();
        if (field && replay) field.value = replay;
      } catch (e) {}
    },
    true
  );

  if (!t || optedOut()) return;

  api.track = function (name, meta) {
    if (optedOut()) return;
    post('/lo/events', { t: t, type: 'event', name: String(name), page: w.location.pathname, meta: meta || null });
  };

  post('/lo/identity', { t: t })
    .then(function (r) {
      return r && r.status === 200 ? r.json() : null;
    })
    .then(function (who) {
      if (!who || !who.id) return;
      w.LOQ.push([
        'ready',
        function (LO) {
          Promise.resolve(LO.$internal.ready('visitor'))
            .then(function () {
              LO.visitor.identify(who.id, who.traits || {});
              return LO.$internal.ready('events');
            })
            .then(function () {
              LO.events.track('ghl_identified', { source: 'link' });
              post('/lo/events', {
                t: t,
                type: 'visit',
                page: w.location.pathname,
                referrer: referrerHost(),
                visits: visitCount(),
                session: sessionId(),
              });
            })
            .catch(noop);
        },
      ]);
    })
    .catch(noop);
})(window, document);
