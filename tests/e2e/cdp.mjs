// Drives a vivarium desktop's Chromium with Playwright over the CDP URL the runner hands out
// (`cdp_url`, through the runner's authenticated port proxy), as an external agent would.
//
// usage: node cdp.mjs <cdp_url> <page_url> [--click SELECTOR] [--read SELECTOR] [--eval EXPR]
//                     [--fullscreen] [--reuse]
//
// Opens <page_url> in a new tab of the desktop's default context (or, with --reuse, the tab that
// already shows it), brings it to the front, optionally clicks SELECTOR and waits for the element
// --read to have non-empty text, evaluates EXPR, optionally makes the window full-screen (CDP
// Browser.setWindowBounds) and prints one JSON object on stdout:
//   {"version", "contexts", "pages_before", "url", "title", "text", "eval"}
// Exits non-zero with a message on stderr on any failure. Playwright is only disconnected at the
// end: the desktop's Chromium keeps running.

import { chromium } from 'playwright-core';

const TIMEOUT_MS = 30_000;

function parseArgs(argv) {
  const [cdpUrl, pageUrl, ...rest] = argv;
  if (!cdpUrl || !pageUrl) {
    throw new Error('usage: cdp.mjs <cdp_url> <page_url> [--click SEL] [--read SEL] [--eval EXPR] [--fullscreen] [--reuse]');
  }
  const opts = { cdpUrl, pageUrl, click: null, read: null, eval: null, fullscreen: false, reuse: false };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    const value = () => {
      const v = rest[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--click': opts.click = value(); break;
      case '--read': opts.read = value(); break;
      case '--eval': opts.eval = value(); break;
      case '--fullscreen': opts.fullscreen = true; break;
      case '--reuse': opts.reuse = true; break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  return opts;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const browser = await chromium.connectOverCDP(opts.cdpUrl, { timeout: TIMEOUT_MS });
  try {
    const contexts = browser.contexts();
    if (contexts.length === 0) throw new Error('the desktop Chromium has no default context');
    const ctx = contexts[0];
    const pagesBefore = ctx.pages().length;
    let page = opts.reuse ? ctx.pages().find((p) => p.url() === opts.pageUrl) : undefined;
    if (!page) {
      page = await ctx.newPage();
      await page.goto(opts.pageUrl, { waitUntil: 'load', timeout: TIMEOUT_MS });
    }
    await page.bringToFront();

    let text = null;
    if (opts.click) {
      await page.click(opts.click, { timeout: TIMEOUT_MS });
    }
    if (opts.read) {
      const el = page.locator(opts.read);
      // Waits for the DOM change the click causes (auto-retrying assertion-free poll).
      await page.waitForFunction(
        (sel) => (document.querySelector(sel)?.textContent ?? '') !== '',
        opts.read,
        { timeout: TIMEOUT_MS },
      );
      text = await el.textContent();
    }
    let evaluated = null;
    if (opts.eval) {
      evaluated = await page.evaluate(opts.eval);
    }
    if (opts.fullscreen) {
      const session = await ctx.newCDPSession(page);
      const { windowId } = await session.send('Browser.getWindowForTarget');
      await session.send('Browser.setWindowBounds', { windowId, bounds: { windowState: 'fullscreen' } });
      // The page is full-screen once its viewport covers the screen.
      await page.waitForFunction(
        () => window.innerWidth === screen.width && window.innerHeight === screen.height,
        null,
        { timeout: TIMEOUT_MS },
      );
      await session.detach();
    }
    const result = {
      version: browser.version(),
      contexts: contexts.length,
      pages_before: pagesBefore,
      url: page.url(),
      title: await page.title(),
      text,
      eval: evaluated,
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    // For a connectOverCDP browser this disconnects; the remote Chromium keeps running.
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`cdp.mjs: ${e?.stack ?? e}\n`);
  process.exit(1);
});
