/**
 * The SDK against a LIVE runner this test starts (real crun sandboxes from the desktop image).
 * Needs root, the runner binary (VIVARIUM_BIN or target/debug/vivarium) and the static agent.
 */

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import {
  AuthenticationError,
  InvalidArgumentError,
  NotFoundError,
  Sandbox,
  TimeoutError,
  VivariumError,
  type SandboxOptions,
  type WindowInfo,
} from "../src/index.js";
import { KEY, Runner, pngSize, until } from "./harness.js";

let runner: Runner;
let image: string;
let conn: { url: string; apiKey: string };

before(async () => {
  runner = await Runner.start();
  image = await runner.importDesktop();
  conn = { url: runner.url, apiKey: KEY };
});

after(async () => {
  await runner?.stop();
});

function opts(extra: SandboxOptions = {}): SandboxOptions {
  return { ...conn, image, vcpus: 1, memMib: 512, desktop: false, metadata: { suite: "ts-sdk" }, ...extra };
}

describe("lifecycle", () => {
  test("create, list, connect, setTimeout, kill", async () => {
    const sb = await Sandbox.create(opts({ metadata: { suite: "ts-sdk", case: "lifecycle" }, envs: { GREETING: "hi" } }));
    assert.match(sb.sandboxId, /\S/);
    assert.equal(sb.lastInfo.state, "running");
    assert.equal(sb.lastInfo.memMib, 512);
    assert.equal(sb.cdpUrl, undefined, "no desktop, no CDP URL");

    const listed = await Sandbox.list({ ...conn, metadata: { case: "lifecycle" } });
    assert.deepEqual(
      listed.map((s) => s.sandboxId),
      [sb.sandboxId],
    );
    assert.equal((await Sandbox.list({ ...conn, metadata: { case: "no-such" } })).length, 0);

    const again = await Sandbox.connect(sb.sandboxId, conn);
    assert.equal(again.sandboxId, sb.sandboxId);
    assert.equal((await again.commands.run("echo $GREETING")).stdout, "hi\n");

    const before = sb.lastInfo.endAt.getTime();
    await sb.setTimeout(3600);
    assert.ok(sb.lastInfo.endAt.getTime() > before + 1000_000, "expiry moved about an hour ahead");

    assert.equal(await sb.kill(), true);
    assert.equal(await sb.kill(), false, "second kill finds nothing");
    assert.equal(await sb.isRunning(), false);
    await assert.rejects(Sandbox.connect(sb.sandboxId, conn), NotFoundError);
  });

  test("await using deletes the sandbox at the end of the block", async () => {
    let id = "";
    {
      await using sb = await Sandbox.create(opts());
      id = sb.sandboxId;
      assert.equal(await sb.isRunning(), true);
    }
    const all = await Sandbox.list(conn);
    assert.ok(!all.some((s) => s.sandboxId === id), "sandbox gone after the block");
  });
});

describe("commands and files", () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create(opts());
  });
  after(async () => {
    await sb?.kill();
  });

  test("run: stdout, stderr, exit code, envs, cwd, argv, stdin", async () => {
    const r = await sb.commands.run("echo out; echo err >&2; exit 3");
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(r.exitCode, 3);
    assert.equal(r.timedOut, false);
    const e = await sb.commands.run("echo $A-$B; pwd", { envs: { A: "x", B: "y" }, cwd: "/tmp" });
    assert.equal(e.stdout, "x-y\n/tmp\n");
    const a = await sb.commands.run(["printf", "%s|", "a b", "c"]);
    assert.equal(a.stdout, "a b|c|");
    const i = await sb.commands.run("tr a-z A-Z", { stdin: "shout" });
    assert.equal(i.stdout, "SHOUT");
  });

  test("run with onStdout streams output as it is produced", async () => {
    const chunks: string[] = [];
    const errs: string[] = [];
    const r = await sb.commands.run("for i in 1 2 3; do echo line$i; sleep 0.2; done; echo bad >&2", {
      onStdout: (d) => chunks.push(d),
      onStderr: (d) => errs.push(d),
    });
    assert.equal(r.exitCode, 0);
    assert.equal(chunks.join(""), "line1\nline2\nline3\n");
    assert.ok(chunks.length >= 2, `output came in pieces, got ${JSON.stringify(chunks)}`);
    assert.equal(r.stdout, "line1\nline2\nline3\n");
    assert.equal(errs.join(""), "bad\n");
  });

  test("a command past its timeout throws TimeoutError carrying its output", async () => {
    const err = await sb.commands.run("echo started; sleep 30", { timeout: 1 }).then(
      () => assert.fail("should time out"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof TimeoutError, `got ${String(err)}`);
    assert.ok(err instanceof VivariumError);
    const result = err.result as { stdout: string; timedOut: boolean };
    assert.equal(result.timedOut, true);
    assert.equal(result.stdout, "started\n");
  });

  test("background commands: wait, list, kill", async () => {
    const h = await sb.commands.run("sleep 0.3; echo bg-done", { background: true });
    assert.ok(h.pid > 0);
    const done = await h.wait({ timeout: 20 });
    assert.equal(done.exitCode, 0);
    assert.equal(done.stdout, "bg-done\n");

    const long = await sb.commands.run(["sleep", "300"], { background: true });
    const listed = await sb.commands.list();
    assert.ok(listed.some((p) => p.pid === long.pid && p.running));
    await long.kill();
    const killed = await long.wait({ timeout: 20 });
    assert.equal(killed.exitCode, null);
    assert.equal(killed.signal, 9);
  });

  test("files: write, read, list, info, remove", async () => {
    await sb.files.write("/work/dir/hello.txt", "héllo wörld\n");
    assert.equal(await sb.files.read("/work/dir/hello.txt"), "héllo wörld\n");
    const bin = new Uint8Array(randomBytes(1 << 20));
    const info = await sb.files.write("/work/dir/blob.bin", bin, { mode: 0o755 });
    assert.equal(info.size, bin.length);
    const back = await sb.files.read("/work/dir/blob.bin", { format: "bytes" });
    assert.ok(Buffer.from(back).equals(Buffer.from(bin)), "1 MiB round trip byte-exact");
    assert.equal((await sb.files.getInfo("/work/dir/blob.bin")).mode & 0o777, 0o755);
    const names = (await sb.files.list("/work/dir")).map((e) => e.name).sort();
    assert.deepEqual(names, ["blob.bin", "hello.txt"]);
    assert.equal((await sb.commands.run("cat /work/dir/hello.txt")).stdout, "héllo wörld\n");
    await sb.files.remove("/work/dir/hello.txt");
    assert.equal(await sb.files.exists("/work/dir/hello.txt"), false);
    await assert.rejects(sb.files.read("/work/dir/hello.txt"), NotFoundError);
    await sb.files.remove("/work/dir", { recursive: true });
    assert.equal(await sb.files.exists("/work/dir"), false);
    await sb.files.makeDir("/work/a/b");
    assert.equal((await sb.files.getInfo("/work/a/b")).type, "dir");
  });
});

describe("errors map to their classes", () => {
  test("auth, not found, bad input, unreachable runner", async () => {
    const wrong = await Sandbox.list({ url: runner.url, apiKey: "wrong-key" }).catch((e: unknown) => e);
    assert.ok(wrong instanceof AuthenticationError, `wrong key: ${String(wrong)}`);
    assert.equal(wrong.status, 401);
    const none = await fetch(`${runner.url}/v1/runs`);
    assert.equal(none.status, 401);

    const nf = await Sandbox.connect("no-such-sandbox", conn).catch((e: unknown) => e);
    assert.ok(nf instanceof NotFoundError && nf instanceof VivariumError, `not found: ${String(nf)}`);
    assert.equal(nf.code, "not_found");

    const latest = await Sandbox.create(opts({ image: "busybox:latest" })).catch((e: unknown) => e);
    assert.ok(latest instanceof InvalidArgumentError, `latest tag: ${String(latest)}`);
    assert.equal(latest.field, "image");

    const neg = await Sandbox.create(opts({ memMib: -5 })).catch((e: unknown) => e);
    assert.ok(neg instanceof InvalidArgumentError, `negative mem: ${String(neg)}`);
    assert.equal(neg.field, "mem_mib");

    const down = await Sandbox.list({ url: "http://127.0.0.1:1", apiKey: KEY }).catch((e: unknown) => e);
    assert.ok(down instanceof VivariumError, `unreachable: ${String(down)}`);
    assert.ok(!(down instanceof NotFoundError) && !(down instanceof AuthenticationError));

    assert.equal((await Sandbox.list(conn)).filter((s) => s.metadata["case"] === "bad").length, 0);
  });

  test("client-side checks throw InvalidArgumentError before any request", async () => {
    const sb = await Sandbox.create(opts());
    try {
      await assert.rejects(sb.commands.run([]), InvalidArgumentError);
      assert.throws(() => sb.getHost(70000), InvalidArgumentError);
      await assert.rejects(sb.leftClick(5), (e: unknown) => e instanceof InvalidArgumentError && e.field === "y");
      // A sandbox without a desktop: desktop actions are refused by the runner.
      await assert.rejects(sb.getScreenSize(), VivariumError);
    } finally {
      await sb.kill();
    }
  });
});

const TEXT = "héllo wörld 你好";
const FORM = `<!doctype html>
<html><head><meta charset="utf-8"><title>vivarium ts form</title>
<style>html,body{margin:0;height:100%;background:#fff}
#q{position:fixed;left:0;top:0;width:100%;height:100%;box-sizing:border-box;font-size:40px}</style></head>
<body><form id="f"><input id="q" name="q" autocomplete="off"></form>
<script>
const q = document.getElementById('q');
q.addEventListener('focus', () => { if (!window.submitted) document.title = 'focused'; });
document.getElementById('f').addEventListener('submit', (e) => {
  e.preventDefault();
  window.submitted = q.value;
  document.title = 'done: ' + q.value;
});
</script></body></html>
`;

describe("desktop", () => {
  let sb: Sandbox;
  /** The Chromium window showing the form, once the form test found it. */
  let formWin: WindowInfo | undefined;
  before(async () => {
    sb = await Sandbox.create({ ...conn, image, vcpus: 2, memMib: 2048, resolution: [1024, 768] });
  });
  after(async () => {
    await sb?.kill();
  });

  test("screenshots decode to the screen's size; URLs are set", async () => {
    assert.deepEqual(sb.lastInfo.desktop, { width: 1024, height: 768 });
    assert.deepEqual(await sb.getScreenSize(), { width: 1024, height: 768 });
    const png = await sb.screenshot();
    assert.deepEqual(pngSize(png), { width: 1024, height: 768 });
    const small = await sb.screenshot({ format: "png", scaleTo: [512, 384] });
    assert.deepEqual(pngSize(small), { width: 512, height: 384 });
    const region = await sb.screenshot({ region: { x: 10, y: 20, width: 100, height: 50 } });
    assert.deepEqual(pngSize(region), { width: 100, height: 50 });
    const jpeg = await sb.screenshot({ format: "jpeg", quality: 60 });
    assert.deepEqual([jpeg[0], jpeg[1]], [0xff, 0xd8], "JPEG SOI marker");

    assert.ok(sb.cdpUrl?.includes(`/sb/${sb.sandboxId}/p/9222`));
    const live = sb.stream.getUrl();
    assert.equal(live, sb.vncUrl);
    assert.ok(sb.stream.getUrl({ viewOnly: true }).endsWith("view_only=true"));
    const page = await fetch(live);
    assert.equal(page.status, 200, "noVNC page through the proxy with the sandbox token");
    await page.arrayBuffer();
    const version = await fetch(sb.cdpUrl!.replace("/p/9222?", "/p/9222/json/version?"));
    assert.equal(version.status, 200);
    const v = (await version.json()) as { Browser?: string };
    assert.match(v.Browser ?? "", /Chrom/);
  });

  test("click and type in a page served in the sandbox, checked over CDP", async () => {
    await sb.files.write("/srv/form.html", FORM);
    await sb.commands.run(["python3", "-m", "http.server", "--bind", "127.0.0.1", "8000", "-d", "/srv"], {
      background: true,
    });
    await until("http.server answers", 20_000, async () => {
      const r = await sb.commands.run(
        "python3 -c \"import urllib.request;urllib.request.urlopen('http://127.0.0.1:8000/form.html')\"",
      );
      return r.exitCode === 0 ? true : undefined;
    });
    // The same page through the runner's port proxy, authorised by the sandbox's token.
    const viaProxy = await fetch(`${sb.getHost(8000)}/form.html`, { headers: { "x-vivarium-token": sb.accessToken } });
    assert.equal(viaProxy.status, 200);
    assert.match(await viaProxy.text(), /vivarium ts form/);

    await sb.open("http://127.0.0.1:8000/form.html");
    const win = await until("the form's window", 30_000, async () =>
      (await sb.getApplicationWindows("chromium")).find((w) => w.title.includes("vivarium ts form")),
    );
    assert.equal(win.app.toLowerCase(), "chromium");
    formWin = win;
    // The input fills the viewport: clicking the window's middle focuses it (retry while the
    // fresh tab drops input before its first frame, as an agent would).
    const cx = win.x + Math.floor(win.width / 2);
    const cy = win.y + Math.floor((win.height * 2) / 3);
    await until("the click focuses the input", 30_000, async () => {
      await sb.leftClick(cx, cy);
      const title = await sb.getWindowTitle(win.id);
      return title.startsWith("focused") ? true : undefined;
    });
    await sb.write(TEXT);
    await sb.press("Return");
    const done = await until("the submitted title", 20_000, async () => {
      const title = await sb.getWindowTitle(win.id);
      return title.includes("done:") ? title : undefined;
    });
    assert.ok(done.includes(`done: ${TEXT}`), `window title ${JSON.stringify(done)}`);

    // CDP over HTTP through cdpUrl: the page target's title is what the page set.
    const targets = (await (await fetch(sb.cdpUrl!.replace("/p/9222?", "/p/9222/json/list?"))).json()) as {
      type: string;
      title: string;
      url: string;
    }[];
    const page = targets.find((t) => t.type === "page" && t.url.endsWith("/form.html"));
    assert.ok(page, `form target in ${JSON.stringify(targets.map((t) => t.url))}`);
    assert.equal(page.title, `done: ${TEXT}`);
  });

  test("pointer: move, cursor position, clicks, press/release, drag, scroll", async () => {
    // On the form page (its input fills the viewport), where clicks and menus do no harm.
    assert.ok(formWin, "the form test ran first");
    const x0 = formWin.x + 100;
    const y0 = formWin.y + Math.floor(formWin.height / 2);
    await sb.moveMouse(x0, y0);
    assert.deepEqual(await sb.getCursorPosition(), { x: x0, y: y0 });
    await sb.drag([x0 + 10, y0], [x0 + 60, y0 + 30]);
    let afterDrag: { x: number; y: number } | undefined;
    await until("the pointer ends the drag at its last point", 5_000, async () => {
      afterDrag = await sb.getCursorPosition();
      return afterDrag.x === x0 + 60 && afterDrag.y === y0 + 30 ? true : undefined;
    }).catch((e: unknown) => {
      throw new Error(`${String(e)}: pointer at ${JSON.stringify(afterDrag)}, drag was (${x0 + 10},${y0})→(${x0 + 60},${y0 + 30})`);
    });
    await sb.mousePress("left", { x: x0 + 70, y: y0 + 40 });
    await sb.mouseRelease("left");
    // As after the drag: the X server may still be finishing the drag's last events (seen once in
    // ~10 runs: the position read back was the drag's end).
    let afterPress: { x: number; y: number } | undefined;
    await until("the pointer moves to the press", 5_000, async () => {
      afterPress = await sb.getCursorPosition();
      return afterPress.x === x0 + 70 && afterPress.y === y0 + 40 ? true : undefined;
    }).catch((e: unknown) => {
      throw new Error(`${String(e)}: pointer at ${JSON.stringify(afterPress)}`);
    });
    await sb.scroll("down", 2, { x: x0 + 80, y: y0 + 50 });
    assert.deepEqual(await sb.getCursorPosition(), { x: x0 + 80, y: y0 + 50 });
    await sb.doubleClick(x0 + 90, y0 + 60);
    assert.deepEqual(await sb.getCursorPosition(), { x: x0 + 90, y: y0 + 60 });
    await sb.middleClick(x0 + 100, y0 + 70);
    assert.deepEqual(await sb.getCursorPosition(), { x: x0 + 100, y: y0 + 70 });
    await sb.rightClick(x0 + 110, y0 + 80);
    assert.deepEqual(await sb.getCursorPosition(), { x: x0 + 110, y: y0 + 80 });
    await sb.press("Escape");
    await assert.rejects(sb.scroll("down", 0), (e: unknown) => e instanceof InvalidArgumentError && e.field === "amount");
  });

  test("clipboard round trip", async () => {
    const clip = "κόσμε 世界 🎉 ok";
    await sb.setClipboard(clip);
    assert.equal(await sb.getClipboard(), clip);
  });

  test("windows: launch, move, resize, maximize, focus, close", async () => {
    const chromium = formWin;
    assert.ok(chromium, "the form test ran first");
    const pid = await sb.launch("xterm", ["-T", "ts-sdk-term"]);
    assert.ok(pid > 0);
    const term = await until("the xterm window", 20_000, async () =>
      (await sb.getWindows()).find((w) => w.title === "ts-sdk-term"),
    );
    assert.equal(term.app, "XTerm");
    await sb.moveWindow(term.id, 40, 30);
    await sb.resizeWindow(term.id, 400, 300);
    // xterm sizes in character cells (WM_NORMAL_HINTS increments), so the size lands within a
    // cell of the request.
    let last: WindowInfo | undefined;
    await until("xterm moved and resized", 10_000, async () => {
      const w = (await sb.getWindows()).find((w) => w.id === term.id);
      last = w;
      const near = (a: number, b: number) => Math.abs(a - b) <= 24;
      // x/y may include the frame border (a pixel or two).
      const close = (a: number, b: number) => Math.abs(a - b) <= 4;
      return w && close(w.x, 40) && close(w.y, 30) && near(w.width, 400) && near(w.height, 300) ? w : undefined;
    }).catch((e: unknown) => {
      throw new Error(`${String(e)}; window was ${JSON.stringify(last)}, at first ${JSON.stringify(term)}`);
    });
    await sb.maximizeWindow(term.id);
    await until("xterm maximized", 10_000, async () => {
      const w = (await sb.getWindows()).find((w) => w.id === term.id);
      return w && w.width > 900 && w.height > 600 ? true : undefined;
    });
    await sb.focusWindow(chromium.id);
    await until("Chromium focused", 10_000, async () =>
      (await sb.getCurrentWindowId()) === chromium.id ? true : undefined,
    );
    await sb.focusWindow(term.id);
    await until("xterm focused", 10_000, async () => ((await sb.getCurrentWindowId()) === term.id ? true : undefined));
    await sb.closeWindow(term.id);
    await until("xterm closed", 10_000, async () =>
      (await sb.getWindows()).some((w) => w.id === term.id) ? undefined : true,
    );
    await assert.rejects(sb.getWindowTitle(term.id), NotFoundError);
  });

  test("computer-tool helpers call the runner's executors", async (t) => {
    const probe = await fetch(`${runner.url}/v1/runs/${sb.sandboxId}/computer/anthropic/tool`, {
      headers: { authorization: `Bearer ${KEY}` },
    });
    await probe.arrayBuffer();
    if (probe.status === 404 || probe.status === 405) {
      t.skip("this runner has no computer-tool executor routes yet");
      return;
    }
    const tool = await sb.computer.anthropicTool({ displayWidthPx: 1024, displayHeightPx: 768 });
    assert.equal(tool["type"], "computer_20250124");
    const shot = await sb.computer.anthropic({ action: "screenshot" });
    assert.equal(shot.is_error, false);
    const img = shot.content.find((b) => b.type === "image");
    assert.ok(img && img.type === "image");
    assert.deepEqual(pngSize(Buffer.from(img.source.data, "base64")), { width: 1024, height: 768 });
    const bad = await sb.computer.anthropic({ action: "fly" });
    assert.equal(bad.is_error, true);
    const out = await sb.computer.openai({ type: "screenshot" }, { callId: "call_1" });
    assert.equal(out.type, "computer_call_output");
    assert.equal(out.call_id, "call_1");
    assert.match(out.output.image_url, /^data:image\/png;base64,/);
    const otool = await sb.computer.openaiTool();
    assert.equal(otool["type"], "computer_use_preview");
  });
});
