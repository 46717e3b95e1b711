// Drive Debian's Chromium (headless, through playwright-core) through Puter's AuthMe page as a
// person would: open the URL `puterfs login` printed, sign in (solving the emulator's captcha
// when it shows one), approve, and wait for the loopback listener's "you can close this tab".
//
//   node authme_chromium.cjs URL USERNAME PASSWORD PROFILE_DIR
//
// env PUTERFS_PLAYWRIGHT: the playwright-core module directory (installed by `make deps`),
// env PUTERFS_CHROMIUM: the browser (default /usr/bin/chromium).
// Prints one JSON line: {"ok": true, "text": ..., "path": ...} or {"ok": false, "error": ...}.
"use strict";

const { chromium } = require(process.env.PUTERFS_PLAYWRIGHT || "playwright-core");

async function main() {
  const [url, username, password, profile] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.PUTERFS_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--no-proxy-server",
    ],
    timeout: 60000,
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(30000);
    await page.goto(url);
    await page.fill("#username", username);
    await page.fill("#password", password);
    if (await page.locator("#captchaAnswer").count()) {
      const answer = await page.locator("#captcha-image text").textContent();
      await page.fill("#captchaAnswer", answer.trim());
    }
    await Promise.all([page.waitForNavigation(), page.click("#login")]);
    const destination = await page.locator("#destination").textContent();
    await Promise.all([page.waitForNavigation(), page.click("#approve")]);
    await page.waitForSelector("#done");
    const text = await page.locator("body").innerText();
    // the page takes the token out of the address bar
    const path = new URL(page.url()).pathname + new URL(page.url()).search;
    console.log(JSON.stringify({ ok: true, text, path, destination }));
  } finally {
    await context.close();
  }
}

main().catch((err) => {
  console.log(JSON.stringify({ ok: false, error: String((err && err.stack) || err) }));
  process.exit(1);
});
