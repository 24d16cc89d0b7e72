// How the browser tests' scripts (relay_call.mjs, show_page.mjs) run Debian's
// Chromium through playwright-core: the same command line for every script,
// all of it ours, and the same bounded run with one JSON report at the end.

import { X509Certificate, createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

// Chromium's command line is all ours (ignoreDefaultArgs in `launch`), but
// for what Debian's /usr/bin/chromium adds from /etc/chromium.d: Playwright's
// defaults carry a --disable-features of their own, and Chromium honours only
// the last one, so ours would silently cancel theirs.
function chromiumArgs(userDataDir, trustCert) {
  const trusted = [];
  if (trustCert) {
    // Chromium takes the base64 SHA-256 of the certificate's public key.
    const spki = new X509Certificate(readFileSync(trustCert)).publicKey.export({
      type: "spki",
      format: "der",
    });
    const pin = createHash("sha256").update(spki).digest("base64");
    trusted.push(`--ignore-certificate-errors-spki-list=${pin}`);
  }
  return [
    // The tests' traffic stays on this machine: nothing may reach for
    // Google's services, which a closed test network refuses anyway.
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--user-data-dir=${userDataDir}`,
    // What Playwright needs: its protocol on file descriptors 3 and 4, and
    // no window of the profile's own.
    "--remote-debugging-pipe",
    "--no-startup-window",
    // The test's traffic stays on this machine: without this Chromium still
    // looks up Google's hosts at start. The rules apply to IP literals too
    // (a TURN-over-TCP connection to 127.0.0.1 fails with
    // ERR_NAME_NOT_RESOLVED unless excluded), and localhost stays usable.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    // WebRTC leaves loopback interfaces out of the networks it gathers on.
    // Where a default route exists it still reaches 127.0.0.1 from a socket
    // bound to 0.0.0.0; with loopback alone (a namespace with only lo) it
    // gathers no candidate at all without this.
    "--allow-loopback-in-peer-connection",
    // Chromium keeps only the last --disable-features, so this is the one
    // list. WebRtcHideLocalIpsWithMdns: even with iceTransportPolicy
    // "relay", Chromium names its host address with mDNS and announces it
    // to 224.0.0.251 on the default route's interface. The rest would
    // fetch from Google.
    "--disable-features=WebRtcHideLocalIpsWithMdns,OptimizationHints,NetworkTimeServiceQuerying," +
      "MediaRouter,DialMediaRouteProvider,Translate,AimEnabled,PreconnectToSearch",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
    "--password-store=basic",
    "--mute-audio",
    ...trusted,
  ];
}

// Launches Chromium at `executablePath` with `chromiumArgs`, through the
// playwright-core in the npm prefix `modules` (scripts/test-deps installs it
// under the cargo target directory, outside the source tree), within
// `timeoutMs`. `userDataDir` is a fresh empty profile directory that the
// caller owns and removes.
async function launchChromium({
  modules,
  executablePath,
  userDataDir,
  trustCert,
  timeoutMs,
}) {
  const require = createRequire(path.join(path.resolve(modules), "package.json"));
  const { chromium } = require("playwright-core");
  return chromium.launch({
    executablePath,
    ignoreDefaultArgs: true,
    args: chromiumArgs(path.resolve(userDataDir), trustCert),
    timeout: timeoutMs,
  });
}

// Runs `work(browser, report)` in a Chromium launched as `launchChromium`
// does with `launch`, within `timeoutS` seconds, then prints `report` as one
// JSON line and exits: 0 when `report.ok`, else 1. `report.stage` says how
// far the run got; past the deadline the report says where it stuck, and
// the browser goes with this process (Playwright kills the browsers it
// launched when node exits). An error thrown by `work` is added to
// `report.failures`.
export async function runInChromium(launch, timeoutS, report, work) {
  report.ok = false;
  report.stage = "launch";
  let browser;
  const timer = setTimeout(() => {
    report.ok = false;
    report.failures = [`timed out after ${timeoutS}s during ${report.stage}`];
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(1);
  }, timeoutS * 1000);
  try {
    browser = await launchChromium({ ...launch, timeoutMs: timeoutS * 1000 });
    report.browser = browser.version();
    await work(browser, report);
    report.stage = "close";
  } catch (err) {
    report.ok = false;
    report.failures = [...(report.failures ?? []), String(err)];
  }
  await browser?.close().catch(() => {});
  clearTimeout(timer);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(report.ok ? 0 : 1);
}
