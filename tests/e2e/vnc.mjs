// Opens a vivarium desktop's live view (`vnc_url`: noVNC through the runner's port proxy) in
// headless Chromium ON THE HOST, as a person's browser would, and captures what it shows.
//
// usage: node vnc.mjs <vnc_url> <out.png> [--rgb RRGGBB] [--click] [--after-rgb RRGGBB]
//                     [--chromium PATH]
//
// Without a 2xx answer for the page it only saves a screenshot and prints {"status": N}.
// Otherwise it waits until noVNC is connected and the remote framebuffer on its canvas is mostly
// --rgb (default: anything not black), saves a screenshot of the page to <out.png>, and with
// --click clicks the centre of the remote screen through noVNC; with --after-rgb it then waits
// until the canvas is mostly that colour and saves <out>-after.png. Prints one JSON object:
//   {"status", "connected", "view_only", "canvas": {"width","height"}, "fraction", "fraction_after"}
// "fraction" is the share of sampled canvas pixels within a small distance of --rgb.

import { chromium } from 'playwright-core';

const TIMEOUT_MS = 40_000;
/// Share of the canvas a colour must cover to count as "shown".
const DOMINANT = 0.5;

function parseArgs(argv) {
  const [url, out, ...rest] = argv;
  if (!url || !out) {
    throw new Error('usage: vnc.mjs <vnc_url> <out.png> [--rgb RRGGBB] [--click] [--after-rgb RRGGBB] [--chromium PATH]');
  }
  const opts = { url, out, rgb: null, click: false, afterRgb: null, chromium: '/usr/bin/chromium' };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    const value = () => {
      const v = rest[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--rgb': opts.rgb = parseRgb(value()); break;
      case '--after-rgb': opts.afterRgb = parseRgb(value()); break;
      case '--click': opts.click = true; break;
      case '--chromium': opts.chromium = value(); break;
      default: throw new Error(`unknown argument ${a}`);
    }
  }
  return opts;
}

function parseRgb(hex) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
  if (!m) throw new Error(`not a colour: ${hex}`);
  return [1, 2, 3].map((i) => parseInt(m[i], 16));
}

// Runs in the page: the share of sampled canvas pixels near `rgb` (or not black when null).
function canvasFraction(rgb) {
  const canvas = document.querySelector('#noVNC_container canvas');
  if (!canvas || canvas.width < 2 || canvas.height < 2) return -1;
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let hit = 0;
  let n = 0;
  const step = 4 * 97; // every 97th pixel: a few tens of thousands of samples
  for (let i = 0; i < data.length; i += step) {
    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
    const ok = rgb
      ? Math.abs(r - rgb[0]) <= 24 && Math.abs(g - rgb[1]) <= 24 && Math.abs(b - rgb[2]) <= 24
      : r + g + b > 30;
    if (ok) hit++;
    n++;
  }
  return n ? hit / n : -1;
}

async function waitForColour(page, rgb) {
  await page.waitForFunction(
    ([fn, rgb, min]) => new Function(`return (${fn})`)()(rgb) >= min,
    [canvasFraction.toString(), rgb, DOMINANT],
    { timeout: TIMEOUT_MS, polling: 100 },
  );
  return page.evaluate(([fn, rgb]) => new Function(`return (${fn})`)()(rgb), [canvasFraction.toString(), rgb]);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  // Playwright gives the browser a fresh temporary profile (its --user-data-dir) and removes it on
  // close, so no cookie (the proxy's token cookie) survives from one run to the next.
  const browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const resp = await page.goto(opts.url, { waitUntil: 'load', timeout: TIMEOUT_MS });
    const status = resp ? resp.status() : 0;
    if (status < 200 || status >= 300) {
      await page.screenshot({ path: opts.out });
      process.stdout.write(JSON.stringify({ status }) + '\n');
      return;
    }
    // noVNC's UI marks the document element once the RFB connection is up.
    await page.waitForSelector('html.noVNC_connected', { state: 'attached', timeout: TIMEOUT_MS });
    const fraction = await waitForColour(page, opts.rgb);
    const canvas = await page.evaluate(() => {
      const c = document.querySelector('#noVNC_container canvas');
      return { width: c.width, height: c.height };
    });
    const viewOnly = await page.evaluate(() => document.getElementById('noVNC_setting_view_only')?.checked ?? null);
    await page.screenshot({ path: opts.out });

    let fractionAfter = null;
    if (opts.click) {
      const box = await page.locator('#noVNC_container canvas').boundingBox();
      if (!box) throw new Error('the noVNC canvas has no box');
      await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
    }
    if (opts.afterRgb) {
      fractionAfter = await waitForColour(page, opts.afterRgb);
      await page.screenshot({ path: opts.out.replace(/\.png$/, '') + '-after.png' });
    }
    process.stdout.write(
      JSON.stringify({ status, connected: true, view_only: viewOnly, canvas, fraction, fraction_after: fractionAfter }) + '\n',
    );
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  process.stderr.write(`vnc.mjs: ${e?.stack ?? e}\n`);
  process.exit(1);
});
