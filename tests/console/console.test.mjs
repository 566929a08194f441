// The web console in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against a real gateway and executor (gateway.mjs).
// Each view is saved as a screenshot under $EXECGATE_CONSOLE_SHOTS
// (default: a fresh directory under the system's temp dir, printed).
//
// Run: cd tests/console && npm ci && npm test (needs target/debug/execgate
// and /usr/bin/chromium; .ci/run installs both).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startGateway, waitFor } from "./gateway.mjs";

const CHROMIUM = process.env.EXECGATE_CHROMIUM || "/usr/bin/chromium";
// Without the background-networking flags Chromium keeps trying to reach
// the internet.
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const SHOTS = process.env.EXECGATE_CONSOLE_SHOTS || mkdtempSync(join(tmpdir(), "execgate-console-shots-"));
mkdirSync(SHOTS, { recursive: true });

let gw;
let browser;
const pageErrors = [];

before(async () => {
  gw = await startGateway();
  // A persistent context is how Playwright takes a --user-data-dir: a fresh
  // one for each run. Each page is its own tab, so its own sessionStorage.
  browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "execgate-chromium-")), {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    acceptDownloads: true,
    viewport: { width: 1200, height: 860 },
  });
  console.log(`screenshots in ${SHOTS}`);
});

after(async () => {
  if (browser) await browser.close();
  if (gw) gw.stop();
  // A page that threw (or broke the CSP) fails the suite, whichever test
  // caused it.
  assert.deepEqual(pageErrors, [], "errors in the page");
});

async function newPage() {
  const page = await browser.newPage();
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => {
    // A CSP violation is reported on the console; nothing else the page
    // logs is an error.
    if (msg.type() === "error" && /Content Security Policy/i.test(msg.text())) pageErrors.push(msg.text());
  });
  return page;
}

async function signedIn(token = gw.proxyToken) {
  const page = await newPage();
  await page.goto(`${gw.url}/ui/#token=${token}`);
  await page.locator("#nav button").first().waitFor();
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

// The README's two pictures: `EXECGATE_CONSOLE_DOCS=../../docs npm test`
// writes docs/console-<name>.png, a 1000×600 view.
async function docShot(page, name) {
  const dir = process.env.EXECGATE_CONSOLE_DOCS;
  if (!dir) return;
  const size = page.viewportSize();
  await page.setViewportSize({ width: 1000, height: 600 });
  await page.screenshot({ path: join(dir, `console-${name}.png`) });
  await page.setViewportSize(size);
}

test("a bad token gets the gateway's error, by code and message", async () => {
  const page = await newPage();
  await page.goto(`${gw.url}/ui/#token=egp_not-a-real-token`);
  const err = page.locator("#signin-error .error");
  await err.waitFor();
  assert.equal(await err.getAttribute("data-code"), "invalid_token");
  assert.match(await err.textContent(), /invalid_token.*401/);
  assert.equal(await page.locator("#signin").isVisible(), true);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.ok(!page.url().includes("egp_not"), page.url());
  await shot(page, "signin-error");
  await page.close();
});

test("sign in by the form, see the environment; sign out clears the token", async () => {
  const page = await newPage();
  await page.goto(`${gw.url}/ui`); // redirected to /ui/
  assert.ok(page.url().endsWith("/ui/"), page.url());
  await page.fill("#signin-token", gw.proxyToken);
  await page.click("#signin-form button[type=submit]");
  const card = page.locator('.env[data-env="local"]');
  await card.waitFor();
  const text = await card.textContent();
  assert.match(text, /default/);
  assert.match(text, /execgate \d+\.\d+\.\d+ \(linux\)/);
  await card.locator('tr[data-tool="shell"] summary').click();
  assert.match(await card.locator('tr[data-tool="shell"] pre').textContent(), /"command"/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("execgate.token")), gw.proxyToken);
  assert.equal(await page.locator("#who").textContent(), "proxy token: one workspace");
  await shot(page, "environments");
  await docShot(page, "environments");

  await page.click("#signout");
  await page.locator("#signin").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.close();
});

test("sign in by the fragment: the token leaves the address bar", async () => {
  const page = await signedIn();
  assert.ok(!page.url().includes(gw.proxyToken), page.url());
  assert.ok(!page.url().includes("token="), page.url());
  await page.locator('.env[data-env="local"]').waitFor();
  // A reload keeps the session (sessionStorage), with no token in the URL.
  await page.reload();
  await page.locator('.env[data-env="local"]').waitFor();
  await page.close();
});

test("run echo as shell: stdout, exit code, duration", async () => {
  const page = await signedIn();
  await page.click('#nav button[data-view="run"]');
  await page.fill("#run-command", "echo hello-from-the-console; echo to-stderr >&2; exit 3");
  await page.click('#run-form button[type="submit"]');
  await page.locator(".result").waitFor();
  assert.equal(await page.locator("pre.stdout").textContent(), "hello-from-the-console\n");
  assert.equal(await page.locator("pre.stderr-out").textContent(), "to-stderr\n");
  assert.equal(await page.locator(".exit-code").textContent(), "3");
  assert.match(await page.locator(".duration").textContent(), /^\d+ ms$/);
  await shot(page, "run");
  await page.close();
});

test("a process: live output, stdin, terminate", async () => {
  const page = await signedIn();
  await page.click('#nav button[data-view="run"]');
  // Prints a line, then echoes stdin back, line by line.
  await page.fill("#run-command", "echo started-$$; while read l; do echo \"got:$l\"; done");
  await page.click("#run-process");
  const out = page.locator("#proc-output");
  await waitFor("the first line", async () => /started-\d+/.test(await out.textContent()));
  await waitFor("the stream to be live", async () => (await page.locator("#proc-state").textContent()) === "live");
  // Output that arrives after the page opened the stream, without a reload.
  await page.fill("#proc-stdin", "ping-1");
  await page.press("#proc-stdin", "Enter");
  await waitFor("the echo of ping-1", async () => (await out.textContent()).includes("got:ping-1"));
  await page.fill("#proc-stdin", "ping-2");
  await page.click('#proc-stdin-form button[type="submit"]');
  await waitFor("the echo of ping-2", async () => (await out.textContent()).includes("got:ping-2"));
  // It is in the list, running.
  await page.click("#proc-refresh");
  const sid = await page.locator("#proc-pane [data-sid]").getAttribute("data-sid");
  const row = page.locator(`#process-table tr[data-sid="${sid}"]`);
  await row.waitFor();
  assert.match(await row.textContent(), /running/);
  await shot(page, "processes");
  await docShot(page, "processes");

  await page.click("#proc-terminate");
  await waitFor("the exit", async () => /exited/.test(await page.locator("#proc-state").textContent()));
  await waitFor("the list to show it exited", async () => /exited/.test(await row.textContent()));
  await page.close();
});

test("a tty process opens in a terminal: a prompt, keys, colours, its size", async () => {
  const page = await signedIn();
  await page.click('#nav button[data-view="run"]');
  await page.fill("#run-command", "PS1='console$ ' exec bash --norc --noprofile -i");
  await page.check("#run-tty");
  await page.click("#run-process");
  const rows = page.locator("#proc-term .xterm-rows");
  const screen = async () => (await rows.textContent()).replace(/\u00a0/g, " ");
  await waitFor("the prompt", async () => (await rows.count()) === 1 && (await screen()).includes("console$ "));
  assert.equal(await page.locator("#proc-output").isHidden(), true);
  assert.equal(await page.locator("#proc-stdin-form").isHidden(), true);
  await page.locator("#proc-term").click();
  await page.keyboard.type("echo $((6*7)); printf '\\033[31mred-text\\033[0m\\n'; stty size\n");
  const size = await page.locator("#proc-term").getAttribute("data-size");
  assert.match(size, /^\d+ \d+$/);
  await waitFor("the answers", async () => {
    const text = await screen();
    return text.includes("42") && text.includes("red-text") && text.includes(size);
  });
  // Red (xterm's palette colour 1, #cc0000) comes from a class whose rule
  // xterm.js writes into a <style>: the CSP shim (terminal.js) carries it.
  const red = rows.locator("span", { hasText: "red-text" }).last();
  assert.match(await red.getAttribute("class"), /xterm-fg-1\b/);
  assert.doesNotMatch((await red.getAttribute("style")) || "", /color/);
  assert.equal(await red.evaluate((el) => getComputedStyle(el).color), "rgb(204, 0, 0)");
  await shot(page, "terminal");
  await page.click("#proc-terminate");
  await waitFor("the exit", async () => /exited/.test(await page.locator("#proc-state").textContent()));
  await page.close();
});

test("output the executor dropped is marked where it was lost", async () => {
  // 200 KB of numbered lines on `tiny` (16 KiB kept), before anyone reads.
  const resp = await fetch(`${gw.url}/api/connectors/envs/tiny/tool/call`, {
    method: "POST",
    headers: { Authorization: `Bearer ${gw.proxyToken}` },
    body: JSON.stringify({ tool: "exec_command", arguments: { command: "seq 1 40000; echo last-line; sleep 60" } }),
  });
  const sid = (await resp.json()).structuredContent.session_id;
  await waitFor("the output to be written", async () => {
    const r = await fetch(`${gw.url}/api/connectors/processes/${sid}/output?since=0`, { headers: { Authorization: `Bearer ${gw.proxyToken}` } });
    return (await r.json()).lost_bytes > 0;
  });
  const page = await signedIn();
  await page.click('#nav button[data-view="processes"]');
  await page.locator(`#process-table tr[data-sid="${sid}"] button`).click();
  const out = page.locator("#proc-output");
  await waitFor("the last line", async () => (await out.textContent()).includes("last-line"));
  const lost = out.locator(".lost");
  assert.equal(await lost.count(), 1);
  assert.match(await lost.textContent(), /^\[\d+ bytes of output lost here \(seq 1–\d+\)/);
  // The lost range comes first, then what the executor kept, up to the
  // end: the bytes said lost plus the bytes shown are the whole output.
  const text = await out.textContent();
  const marker = await lost.textContent();
  assert.ok(text.startsWith(marker), text.slice(0, 200));
  const shown = text.slice(marker.length);
  const whole = Array.from({ length: 40000 }, (_, i) => `${i + 1}\n`).join("") + "last-line\n";
  assert.ok(whole.endsWith(shown), `not the end of the output: ${shown.slice(0, 100)}`);
  assert.equal(Number(marker.match(/^\[(\d+) bytes/)[1]) + shown.length, whole.length);
  await shot(page, "lost-output");
  await page.click("#proc-terminate");
  await page.close();
});

test("upload a file and download it back byte-exact; view a text file", async () => {
  const page = await signedIn();
  await page.click('#nav button[data-view="files"]');
  const bytes = randomBytes(700 * 1024 + 13); // binary, with NULs
  const src = join(gw.dir, "upload.bin");
  writeFileSync(src, bytes);
  const dest = join(gw.workdir, "sub", "uploaded.bin");
  await page.setInputFiles("#files-upload-file", src);
  await page.fill("#files-upload-path", dest);
  await page.click("#files-upload");
  const result = page.locator("#files-upload-result");
  await result.waitFor();
  const sha = createHash("sha256").update(bytes).digest("hex");
  assert.match(await result.textContent(), new RegExp(sha));
  assert.deepEqual(readFileSync(dest), bytes);
  assert.equal(await page.locator("#upload-progress").getAttribute("max"), "1");

  await page.fill("#files-path", dest);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#files-download")]);
  assert.equal(download.suggestedFilename(), "uploaded.bin");
  const saved = join(gw.dir, "downloaded.bin");
  await download.saveAs(saved);
  assert.deepEqual(readFileSync(saved), bytes);
  assert.match(await page.locator("#download-text").textContent(), /downloaded 700\.0 KiB/);

  // Viewing a binary file says so; a text file is shown.
  await page.click("#files-view");
  await page.getByText("not text").waitFor();
  writeFileSync(join(gw.workdir, "notes.txt"), "line one\nline two ✓\n");
  await page.fill("#files-path", "notes.txt");
  await page.click("#files-view");
  await waitFor("the file's text", async () => (await page.locator("#files-content").count()) === 1);
  assert.equal(await page.locator("#files-content").textContent(), "line one\nline two ✓\n");
  await shot(page, "files");

  // A missing file is the gateway's error, not a blank.
  await page.fill("#files-path", "no/such/file");
  await page.click("#files-view");
  const err = page.locator('.error[data-code="file_not_found"]');
  await err.waitFor();
  await page.close();
});

test("browse a directory with list_dir: open a directory, view a file, go up", async () => {
  const page = await signedIn();
  await page.click('#nav button[data-view="files"]');
  const base = join(gw.workdir, "browse");
  mkdirSync(join(base, "inner"), { recursive: true });
  writeFileSync(join(base, "b.txt"), "bee\n");
  writeFileSync(join(base, "A.md"), "# A\n");
  writeFileSync(join(base, "inner", "deep.txt"), "deep text\n");

  const names = async () => page.locator("#files-listing tr[data-name]").evaluateAll(
    (rows) => rows.map((r) => `${r.dataset.name}:${r.dataset.kind}`));
  await page.fill("#files-path", "browse");
  await page.click("#files-list");
  await page.locator("#files-listing").waitFor();
  assert.deepEqual(await names(), ["..:directory", "A.md:file", "b.txt:file", "inner:directory"]);
  assert.equal(await page.locator("#files-listing-count").textContent(), "3 entries");
  await shot(page, "files-listing");

  // A directory opens in place; a file is viewed.
  await page.click('#files-listing tr[data-name="inner"] a');
  await waitFor("inner's listing", async () => (await names()).includes("deep.txt:file"));
  assert.equal(await page.inputValue("#files-path"), "browse/inner");
  await page.click('#files-listing tr[data-name="deep.txt"] a');
  await waitFor("the file's text", async () => (await page.locator("#files-content").count()) === 1);
  assert.equal(await page.locator("#files-content").textContent(), "deep text\n");
  assert.equal(await page.inputValue("#files-path"), "browse/inner/deep.txt");

  // Up, through "..".
  await page.fill("#files-path", "browse/inner");
  await page.click("#files-list");
  await waitFor("inner's listing", async () => (await names()).includes("deep.txt:file"));
  await page.click('#files-listing tr[data-name=".."] a');
  await waitFor("browse's listing again", async () => (await names()).includes("inner:directory"));

  // Not a directory: the tool's error, not a blank.
  await page.fill("#files-path", "browse/b.txt");
  await page.click("#files-list");
  const err = page.locator('.error[data-code="tool_error"]');
  await err.waitFor();
  assert.match(await err.textContent(), /directory/i);
  await page.close();
});

test("admin: create a token, use it, revoke it, and the next request is refused", async () => {
  const adminPage = await signedIn(gw.adminToken);
  assert.equal(await adminPage.locator("#who").textContent(), "admin token: all workspaces");
  await adminPage.locator('#ws-table tr[data-workspace="console"]').waitFor();
  await adminPage.fill("#token-workspace", "console");
  await adminPage.fill("#token-user", "console-test");
  await adminPage.click('#token-form button[type="submit"]');
  const token = (await adminPage.locator("#token-created pre").textContent()).trim();
  assert.match(token, /^egp_/);

  const user = await signedIn(token);
  await user.locator('.env[data-env="local"]').waitFor();

  // Revoke it: the button asks for a second click.
  const row = adminPage.locator("#token-table tr", { hasText: "console-test" });
  await row.locator("button").click();
  await row.locator("button", { hasText: "Click again" }).click();
  await waitFor("the token to show revoked", async () => /revoked/.test(await row.textContent()));

  await user.locator("#view button", { hasText: "Refresh" }).click();
  await user.locator('#view .error[data-code="invalid_token"]').waitFor();
  // The page says once, above any view, that the token stopped working.
  await user.locator('#banner .error[data-code="invalid_token"]').waitFor();
  await shot(user, "revoked");
  await user.click("#banner-signout");
  await user.locator("#signin").waitFor();
  assert.equal(await user.evaluate(() => sessionStorage.length), 0);
  await user.close();

  // Executors: add one of each kind; the start command is shown once.
  await adminPage.fill("#exe-workspace", "console");
  await adminPage.fill("#exe-name", "laptop-2");
  await adminPage.click('#exe-form button[type="submit"]');
  const cmd = await adminPage.locator("#executor-created pre").textContent();
  assert.match(cmd, new RegExp(`^execgate executor --gateway ${gw.url} --token exe_\\S+ --workdir ~$`));
  await adminPage.fill("#exe-name", "codex-box");
  await adminPage.selectOption("#exe-kind", "codex");
  await adminPage.click('#exe-form button[type="submit"]');
  await waitFor("the codex command", async () => /npx codex exec-server --remote/.test(await adminPage.locator("#executor-created pre").textContent()));
  const codexCmd = await adminPage.locator("#executor-created pre").textContent();
  assert.match(codexCmd, /AWS_ACCESS_KEY_ID=\S+ AWS_SECRET_ACCESS_KEY=\S+/);
  assert.match(codexCmd, /--environment-id exe_\S+/);
  const local = adminPage.locator('#exe-table tr[data-exe="console/local"]');
  assert.match(await local.textContent(), /online/);
  await shot(adminPage, "admin");

  const added = adminPage.locator('#exe-table tr[data-exe="console/laptop-2"]');
  assert.match(await added.textContent(), /offline/);
  await added.locator("button").click();
  await added.locator("button", { hasText: "Click again" }).click();
  await waitFor("laptop-2 to go", async () => (await added.count()) === 0);
  await adminPage.close();
});

test("audit: the operations above, filtered by tool and outcome", async () => {
  const page = await signedIn(gw.adminToken);
  await page.click('#nav button[data-view="audit"]');
  await page.selectOption("#audit-workspace", "console");
  await page.click('#audit-form button[type="submit"]');
  await waitFor("audit rows", async () => (await page.locator("#audit-table tbody tr").count()) > 0);
  await page.fill("#audit-tool", "shell");
  const rows = page.locator("#audit-table tbody tr");
  await waitFor("only shell rows", async () => {
    const texts = await rows.allTextContents();
    return texts.length > 0 && texts.every((t) => t.includes("shell"));
  });
  await page.fill("#audit-tool", "");
  await page.selectOption("#audit-outcome", "ok");
  const outcomes = await page.locator("#audit-table tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.outcome));
  assert.ok(outcomes.length > 0 && outcomes.every((o) => o === "ok"), outcomes.join(","));
  await page.selectOption("#audit-outcome", "");
  await shot(page, "audit");
  await page.close();
});

test("a narrow window: nothing overflows sideways", async () => {
  const page = await signedIn();
  await page.setViewportSize({ width: 380, height: 760 });
  for (const view of ["envs", "run", "processes", "files"]) {
    await page.click(`#nav button[data-view="${view}"]`);
    await page.locator(`#view[data-view="${view}"] h1`).waitFor();
    const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(scroll <= inner, `${view}: the page is ${scroll}px wide in a ${inner}px window`);
  }
  await page.click('#nav button[data-view="envs"]');
  await page.locator('.env[data-env="local"]').waitFor();
  await shot(page, "narrow");
  await page.close();

  const adminPage = await signedIn(gw.adminToken);
  await adminPage.setViewportSize({ width: 380, height: 760 });
  for (const view of ["admin", "audit"]) {
    await adminPage.click(`#nav button[data-view="${view}"]`);
    await adminPage.locator(`#view[data-view="${view}"] table`).first().waitFor();
    const [scroll, inner] = await adminPage.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(scroll <= inner, `${view}: the page is ${scroll}px wide in a ${inner}px window`);
  }
  await adminPage.close();
});
