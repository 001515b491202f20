// Drives pgveil's security page in headless Debian Chromium (playwright-core, no downloaded browser):
// enrol, read the secret, confirm with a TOTP code computed here, see the recovery codes, get a connection
// string. Usage: node security_page.mjs <security page URL> <screenshot.png>
// Env: PGVEIL_SERVER_CERT = the API's certificate (its key is pinned); PGVEIL_CLOCK = the API's (injected) clock in Unix seconds. Prints one JSON line: {token, recovery_codes}.
import { createHash, createHmac, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0, value = 0; const out = [];
  for (const c of s.replace(/=+$/, '')) {
    value = (value << 5) | alphabet.indexOf(c); bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  return Buffer.from(out);
}

// RFC 6238 TOTP, SHA1, 6 digits, 30 s.
function totp(secret, t) {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(Math.floor(t / 30)));
  const h = createHmac('sha1', base32Decode(secret)).update(msg).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1_000_000).padStart(6, '0');
}

const [url, shot] = process.argv.slice(2);
const now = Number(process.env.PGVEIL_CLOCK || Math.floor(Date.now() / 1000));
// Trust exactly the dev server's key (Chromium has no way to take a CA file; pinning the key is stricter).
const extra = [];
if (process.env.PGVEIL_SERVER_CERT) {
  const spki = new X509Certificate(readFileSync(process.env.PGVEIL_SERVER_CERT)).publicKey.export({ type: 'spki', format: 'der' });
  extra.push(`--ignore-certificate-errors-spki-list=${createHash('sha256').update(spki).digest('base64')}`);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', ...extra],
});
try {
  const page = await browser.newPage({ ignoreHTTPSErrors: false, viewport: { width: 900, height: 900 } });
  await page.goto(url);
  if (!(await page.textContent('#status')).includes('off')) throw new Error('expected 2FA off');
  await page.click('#enable-2fa');
  await page.waitForSelector('#secret');
  const qr = await page.$('.qr img');
  if (!qr) throw new Error('no QR code');
  const secret = (await page.textContent('#secret')).trim();
  await page.fill('#confirm-code', totp(secret, now));
  if (shot) await page.screenshot({ path: shot, fullPage: false });
  await page.click('#confirm');
  await page.waitForSelector('#recovery-codes');
  const codes = await page.$$eval('#recovery-codes li', (els) => els.map((e) => e.textContent.trim()));
  // The confirming step is used: log in with the next step's code (accepted within the ±1 window).
  await page.fill('#login-code', totp(secret, now + 30));
  await page.click('#get-token');
  await page.waitForSelector('#token');
  const token = (await page.textContent('#token')).trim();
  const conn = (await page.textContent('#conn-url')).trim();
  if (!conn.startsWith('postgresql://')) throw new Error('no connection URL');
  console.log(JSON.stringify({ token, recovery_codes: codes.length }));
} finally {
  await browser.close();
}
