// The snippet's session rotation, its answer to a rate limit and to going offline: a page whose
// snippet has a short idle time (data-session-idle-minutes) and small batches sends a pageview and
// a burst of clicks to a bridge that rate-limits the application (429 with Retry-After), clicks
// while the browser is offline and comes back online, waits past the idle time and clicks once
// more. Prints one JSON line: every event the page sent, in order, the session
// ids, and how many replies were 429.
// Called by processor/tests/it/browser.rs, which then reads the events from ClickHouse.
import { launch, required } from './chromium.mjs';
import { page as sitePage, serveSite } from './site.mjs';

const bridge = required('EYE_BRIDGE_URL');
const apiKey = required('EYE_API_KEY');
const sitePort = Number(required('EYE_SITE_PORT'));
const clicks = Number(process.env.EYE_CLICKS || 12);

const attributes = { 'api-key': apiKey, 'session-idle-minutes': '0.03', 'batch-size': '5' };
const site = await serveSite(sitePort, {
  '/': sitePage('Limits', `${bridge}/v1/eye.js`, attributes, `
<script>let clicks = 0;</script>
<button id="cta" onclick="eye.track('page interaction', 'cta click', {...eye.page(), element: 'click ' + (++clicks)})">Go</button>`),
});

const browser = await launch();
const made = new Map();
const statuses = {};
try {
  const tab = await browser.newPage();
  tab.on('request', (request) => {
    if (request.url().includes('/v1/events') && request.postData()) {
      for (const event of JSON.parse(request.postData())) {
        if (!made.has(event.event_id)) made.set(event.event_id, event);
      }
    }
  });
  tab.on('response', (response) => {
    if (response.url().includes('/v1/events')) {
      statuses[response.status()] = (statuses[response.status()] || 0) + 1;
    }
  });
  const drained = () =>
    tab.waitForFunction(() => sessionStorage.getItem('eye.queue') === '[]', null, { timeout: 60000 });

  await tab.goto(`http://127.0.0.1:${sitePort}/`);
  for (let click = 0; click < clicks; click++) {
    await tab.click('#cta');
  }
  // Offline while the burst is still being let through: one more click waits in the queue.
  const context = tab.context();
  await context.setOffline(true);
  await tab.click('#cta');
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const queuedOffline = JSON.parse(await tab.evaluate(() => sessionStorage.getItem('eye.queue'))).length;
  await context.setOffline(false);
  await drained();
  // Past the idle time (0.03 minutes): the next event starts a new session.
  await new Promise((resolve) => setTimeout(resolve, 2500));
  await tab.click('#cta');
  await drained();

  const events = [...made.values()];
  const sessions = [...new Set(events.map((event) => event.session_id))];
  console.log(JSON.stringify({ events, sessions, statuses, queuedOffline }));
} finally {
  await browser.close();
  site.close();
}
