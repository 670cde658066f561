// A web site on 127.0.0.1 for the snippet tests: fixed pages that load the bridge's snippet.
import http from 'node:http';

/// A page that loads the snippet from `snippetUrl` with `attributes` (data-* of the script tag).
export function page(title, snippetUrl, attributes, body) {
  const data = Object.entries(attributes).map(([name, value]) => `data-${name}="${value}"`).join(' ');
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title>
<script src="${snippetUrl}" ${data}></script></head><body>${body}</body></html>`;
}

/// Serves `pages` (path → HTML) on 127.0.0.1:`port`, the origin the bridge allows.
export async function serveSite(port, pages) {
  const site = http.createServer((request, response) => {
    const html = pages[new URL(request.url, 'http://site').pathname];
    response.writeHead(html ? 200 : 404, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(html || 'not found');
  });
  await new Promise((resolve) => site.listen(port, '127.0.0.1', resolve));
  return site;
}
