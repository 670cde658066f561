// Opens the bridge's API reference (/docs), presents the API key, sends the reference pageview
// with "Execute", and prints the reply as one JSON line: {"status": 202, "body": {...}}.
// Called by processor/tests/it/browser.rs, which then finds the event in ClickHouse.
import { launch, required } from './chromium.mjs';

const docsUrl = required('EYE_DOCS_URL');
const apiKey = required('EYE_API_KEY');
const screenshot = process.env.EYE_SCREENSHOT;

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const outside = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(new URL(docsUrl).origin)) {
      outside.push(request.url());
    }
  });
  await page.goto(docsUrl);

  await page.locator('.auth-wrapper button.authorize').click();
  const bearer = page.locator('.auth-container').filter({ hasText: 'bearer' });
  await bearer.locator('input').fill(apiKey);
  await bearer.locator('button.authorize').click();
  await page.locator('.dialog-ux button.btn-done').first().click();

  const operation = page.locator('#operations-events-send_events');
  await operation.locator('.opblock-summary').first().click();
  // The examples are the reference events of examples/events/, by name.
  const examples = operation.locator('select', { has: page.locator('option[value="pageview"]') });
  await examples.selectOption('pageview');
  await operation.locator('button.execute').click();

  const reply = operation.locator('.live-responses-table .response');
  await reply.first().waitFor();
  const status = Number((await reply.locator('.response-col_status').first().innerText()).trim());
  const body = await reply.locator('.response-col_description pre').first().innerText();
  if (screenshot) {
    // From the top of the page to the end of the reply: the request and what came back.
    const end = await operation.locator('.live-responses-table').first().boundingBox();
    const scrolled = await page.evaluate(() => window.scrollY);
    await page.screenshot({
      path: screenshot,
      fullPage: true,
      clip: { x: 0, y: 0, width: 1280, height: Math.ceil(scrolled + end.y + end.height + 24) },
    });
  }
  console.log(JSON.stringify({ status, body: JSON.parse(body), outside }));
} finally {
  await browser.close();
}
