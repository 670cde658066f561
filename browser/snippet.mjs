// A web site using the browser snippet, driven like a visitor: it opens the home page, clicks a
// call-to-action, submits a form while the bridge is unreachable (the connection is refused),
// lands on the thank-you page, the bridge comes back, clicks once more and leaves. Prints one JSON
// line: every event the page made, in the order it made them, and the session ids it used.
// Called by processor/tests/it/browser.rs, which then reads the events from ClickHouse.
import net from 'node:net';
import { launch, required } from './chromium.mjs';
import { page as sitePage, serveSite } from './site.mjs';

const bridge = new URL(required('EYE_BRIDGE_URL'));
const apiKey = required('EYE_API_KEY');
const sitePort = Number(required('EYE_SITE_PORT'));
const outageMs = Number(process.env.EYE_OUTAGE_MS || 4000);

/// The page's way to the bridge: a TCP relay that can refuse connections for a while.
class Relay {
  constructor() {
    this.sockets = new Set();
    this.watches = [];
  }

  /// Resolves once a request holding `needle` has been answered 202 through the relay.
  acknowledges(needle) {
    return new Promise((resolve) => this.watches.push({ needle, resolve }));
  }

  async listen(port = 0) {
    this.server = net.createServer((client) => {
      const upstream = net.connect(Number(bridge.port), bridge.hostname);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on('close', () => this.sockets.delete(socket));
        socket.on('error', () => {});
      }
      let carried = [];
      let sent = '';
      client.on('data', (chunk) => {
        sent += chunk.toString('latin1');
        carried = this.watches.filter((watch) => sent.includes(watch.needle));
      });
      upstream.on('data', (chunk) => {
        if (carried.length > 0 && chunk.toString('latin1').startsWith('HTTP/1.1 202')) {
          for (const watch of carried) watch.resolve();
          this.watches = this.watches.filter((watch) => !carried.includes(watch));
          carried = [];
          sent = '';
        }
      });
      client.pipe(upstream).pipe(client);
    });
    await new Promise((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.port = this.server.address().port;
  }

  async cut() {
    const closed = new Promise((resolve) => this.server.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  async restore() {
    await this.listen(this.port);
  }
}

const relay = new Relay();
await relay.listen();
const snippet = `http://127.0.0.1:${relay.port}/v1/eye.js`;

const html = (title, body) => sitePage(title, snippet, { 'api-key': apiKey }, body);

const pages = {
  '/': html('Home', `
<button id="cta" onclick="eye.track('page interaction', 'cta click', {...eye.page(), element: 'chat bubble'})">Chat</button>
<form id="signup" action="/thanks" method="get"
  onsubmit="eye.track('form interaction', 'submit', {...eye.page(), form: {first_name: this.first_name.value, last_name: this.last_name.value}})">
  <input name="first_name"><input name="last_name"><button id="submit" type="submit">Sign up</button>
</form>`),
  '/thanks': html('Thanks', `
<a id="home" href="/" onclick="eye.track('page interaction', 'cta click', {...eye.page(), element: 'back home'})">Home</a>`),
};

const site = await serveSite(sitePort, pages);

const browser = await launch();
const made = new Map();
const sessions = new Set();
function record(events) {
  for (const event of events) {
    if (!made.has(event.event_id)) made.set(event.event_id, event);
    sessions.add(event.session_id);
  }
}

try {
  const page = await browser.newPage();
  const acknowledged = () =>
    page.waitForResponse((response) => response.url().includes('/v1/events') && response.status() === 202);
  page.on('request', (request) => {
    if (request.url().includes('/v1/events') && request.postData()) {
      record(JSON.parse(request.postData()));
    }
  });
  // What the snippet holds unacknowledged, read right after each action.
  const queued = async () => record(JSON.parse((await page.evaluate(() => sessionStorage.getItem('eye.queue'))) || '[]'));

  let reply = acknowledged();
  await page.goto(`http://127.0.0.1:${sitePort}/`);
  await queued();
  await reply;

  reply = acknowledged();
  await page.click('#cta');
  await queued();
  await reply;

  await relay.cut();
  await page.fill('input[name=first_name]', 'John');
  await page.fill('input[name=last_name]', 'Doe');
  await queued();
  await Promise.all([page.waitForURL('**/thanks**'), page.click('#submit')]);
  await page.waitForLoadState('load');
  await queued();

  await new Promise((resolve) => setTimeout(resolve, outageMs));
  reply = acknowledged();
  await relay.restore();
  await reply;
  await page.waitForFunction(() => sessionStorage.getItem('eye.queue') === '[]', null, { timeout: 60000 });

  // The last event is still queued when the page is left: the exit beacon carries it.
  await page.evaluate(() => {
    document.getElementById('home').removeAttribute('href');
  });
  await page.click('#home');
  const last = JSON.parse(await page.evaluate(() => sessionStorage.getItem('eye.queue')));
  record(last);
  const delivered = relay.acknowledges(last[last.length - 1].event_id);
  await page.goto('about:blank');
  await Promise.race([
    delivered,
    new Promise((_, reject) => setTimeout(() => reject(new Error('the last event never reached the bridge')), 30000)),
  ]);

  console.log(JSON.stringify({ events: [...made.values()], sessions: [...sessions] }));
} finally {
  await browser.close();
  site.close();
  await relay.cut().catch(() => {});
}
