// Opens a local HTML page in headless Chromium and says what it shows, for
// tests/report_readers.rs: the report `turnpike check --html` writes.
//
// Prints one JSON line: the trimmed text of the element #verdict (null
// without one), the document's title, the number of check rows (the rows
// of the table in #checks), and every URL other than file: the page tried
// to load (a self-contained page tries none). Exits 0 when the page loaded
// and has a #verdict, 1 otherwise, 2 for bad usage. --timeout bounds the
// whole run, browser start included.
//
// Usage: node show_page.mjs --modules DIR --user-data-dir DIR --file PAGE.html
//          [--timeout 30] [--chromium /usr/bin/chromium]
//
// --modules is the npm prefix whose node_modules holds playwright-core;
// --user-data-dir is a fresh empty profile directory that the caller owns
// and removes (see chromium.mjs).

import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { runInChromium } from "./chromium.mjs";

// What the report's HTML renderer writes for each check: one row in the
// table body of the section #checks.
const CHECK_ROWS = "#checks tbody tr";

function usage(message) {
  process.stderr.write(`show_page.mjs: ${message}\n`);
  process.exit(2);
}

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        modules: { type: "string" },
        "user-data-dir": { type: "string" },
        file: { type: "string" },
        timeout: { type: "string", default: "30" },
        chromium: { type: "string", default: "/usr/bin/chromium" },
      },
      strict: true,
    }).values;
  } catch (e) {
    usage(e.message);
  }
  for (const name of ["modules", "user-data-dir", "file"]) {
    if (parsed[name] === undefined) usage(`--${name} is required`);
  }
  const timeout = Number(parsed.timeout);
  if (!(timeout > 0)) usage("--timeout must be a positive number of seconds");
  return { ...parsed, timeout };
}

async function main() {
  const opts = options();
  const launch = {
    modules: opts.modules,
    executablePath: opts.chromium,
    userDataDir: opts["user-data-dir"],
  };
  await runInChromium(launch, opts.timeout, { requests: [] }, async (browser, report) => {
    report.stage = "load";
    const page = await browser.newPage();
    page.on("request", (request) => {
      const url = request.url();
      if (!url.startsWith("file:")) report.requests.push(url);
    });
    const url = pathToFileURL(path.resolve(opts.file)).href;
    // "load": the page and everything it refers to, had it referred to
    // anything, has been fetched.
    const response = await page.goto(url, { waitUntil: "load", timeout: opts.timeout * 1000 });
    if (response && !response.ok()) throw new Error(`${url}: status ${response.status()}`);
    report.stage = "read";
    Object.assign(
      report,
      await page.evaluate((rows) => {
        const verdict = document.getElementById("verdict");
        return {
          verdict: verdict ? verdict.textContent.trim() : null,
          title: document.title,
          checks: document.querySelectorAll(rows).length,
        };
      }, CHECK_ROWS),
    );
    report.ok = report.verdict !== null;
    if (!report.ok) report.failures = ["the page has no element #verdict"];
  });
}

main();
