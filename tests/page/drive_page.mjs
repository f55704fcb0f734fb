// Drives the live page (/_aibridge/) in headless Chromium, as a user would, and prints what
// happened as one JSON line. Run by tests/page.rs with:
//   BRIDGE      the bridge's base URL
//   HINT        the masked hint of the key to watch
//   MODEL       the model the 429 is for
//   KEYS        how many keys the page should list
//   TOKEN       an access token to type in when the page asks (optional)
//   SCREENSHOT  where to save a screenshot (optional)
//   STATUS      the page's status line to wait for: "live" (events, the default) or
//               "polling every second" (the fallback)
// The playwright-core package comes from the npm registry (.ci/setup); Chromium is Debian's.
import { createRequire } from "node:module";

const require = createRequire(process.env.PLAYWRIGHT_CORE_DIR + "/");
const { chromium } = require("playwright-core");

const env = (name) => process.env[name];
const BRIDGE = env("BRIDGE");
const TIMEOUT = 10_000;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM") || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const report = { requests: [], console_errors: [] };
let page;
try {
  page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on("request", (request) => {
    report.requests.push({
      url: request.url(),
      method: request.method(),
      token_header: "x-aibridge-token" in request.headers(),
    });
  });
  page.on("console", (message) => {
    if (message.type() === "error") report.console_errors.push(message.text());
  });
  page.on("pageerror", (error) => report.console_errors.push(String(error)));

  await page.goto(BRIDGE + "/_aibridge/");
  if (env("TOKEN")) {
    await page.locator("#token").waitFor({ state: "visible", timeout: TIMEOUT });
    report.keys_before_token = await page.locator("article.key").count();
    report.text_before_token = await page.locator("body").innerText();
    await page.locator("#token").fill(env("TOKEN"));
    await page.getByRole("button", { name: "Show the pool" }).click();
  }
  await page.waitForFunction(
    (wanted) => document.querySelectorAll("article.key").length === wanted,
    Number(env("KEYS")),
    { timeout: TIMEOUT },
  );
  report.hints = await page.locator(".hint").allInnerTexts();
  await page.waitForFunction((wanted) => document.getElementById("status").textContent === wanted,
    env("STATUS") || "live", { timeout: TIMEOUT });
  report.status = await page.locator("#status").innerText();

  // A 429 for one key and model, through the bridge, from outside the page.
  const card = page.locator(`article[aria-label="Key ${env("HINT")}"]`);
  const cooling = card.locator(`li[data-model="${env("MODEL")}"]`);
  const sent = Date.now();
  const answer = await fetch(BRIDGE + "/anthropic/v1/messages", {
    method: "POST",
    headers: { "content-type": "application/json", ...(env("TOKEN") ? { "x-aibridge-token": env("TOKEN") } : {}) },
    body: JSON.stringify({ model: env("MODEL"), max_tokens: 1, messages: [] }),
  });
  report.request_status = answer.status;
  await cooling.waitFor({ state: "visible", timeout: TIMEOUT });
  report.cooling_shown_ms = Date.now() - sent;
  report.cooling_text = await cooling.innerText();
  report.badge = await card.locator(".badge").innerText();

  if (env("SCREENSHOT")) await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });

  // The reset button, reached by keyboard: focus it, then press Enter.
  const reset = card.getByRole("button", { name: new RegExp("^Reset key " + env("HINT").replace(/[.*+?^${}()|[\]\\]/g, "\\$&")) });
  await reset.focus();
  report.reset_focused = await reset.evaluate((button) => button === document.activeElement);
  await page.keyboard.press("Enter");
  await cooling.waitFor({ state: "detached", timeout: TIMEOUT });
  report.badge_after_reset = await card.locator(".badge").innerText();
} catch (error) {
  report.error = String(error);
  report.status_at_error = await page?.locator("#status").innerText().catch(() => null);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
