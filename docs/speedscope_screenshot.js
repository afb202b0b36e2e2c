// Screenshot of a trace.json in speedscope, headless: how docs/speedscope-*.png were made.
//
//   apt-get install chromium                  # Debian's package
//   npm install speedscope puppeteer-core     # the viewer, and a driver for the Chromium above
//   python3 -m http.server 8765 --bind 127.0.0.1   # in a folder holding speedscope's dist/release as
//                                                  # speedscope/ and the trace as trace.json
//   NODE_PATH=$PWD/node_modules node docs/speedscope_screenshot.js http://127.0.0.1:8765 trace.json out.png 1
//
// The last argument is how many times to press `n` (next thread): 1 shows "kvscope engine, kernels".
const puppeteer = require('puppeteer-core');

(async () => {
  const [base, trace, out, presses] = process.argv.slice(2);
  const browser = await puppeteer.launch({executablePath: '/usr/bin/chromium', headless: true,
                                          args: ['--no-sandbox', '--disable-gpu']});
  const page = await browser.newPage();
  await page.setViewport({width: 1600, height: 900});
  await page.goto(`${base}/speedscope/index.html#profileURL=${base}/${trace}`, {waitUntil: 'networkidle0'});
  await new Promise(r => setTimeout(r, 3000));
  for (let i = 0; i < Number(presses || 0); i++) {
    await page.keyboard.press('n');
    await new Promise(r => setTimeout(r, 500));
  }
  await new Promise(r => setTimeout(r, 1500));
  await page.screenshot({path: out});
  await browser.close();
})();
