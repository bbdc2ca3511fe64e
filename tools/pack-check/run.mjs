// Proves what a user of the published packages gets: the packed
// @chat/protocol and @chat/signal-sdk tarballs install into an empty project
// outside this repository, and the README's SDK example, copied verbatim,
// runs there against a relay started from this checkout on the embedded
// database.
//
//   node tools/pack-check/run.mjs      (after `npm ci`; builds what it needs)
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const repo = resolve(import.meta.dirname, '../..');
const work = mkdtempSync(join(tmpdir(), 'chat-pack-check-'));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'inherit'] });

/** The fenced block that follows `<!-- example:sdk -->` in the README. */
function readmeExample(readme) {
  const match = /<!-- example:sdk -->\s*```(?:js|javascript)\n([\s\S]*?)```/.exec(readme);
  if (!match) throw new Error('README.md has no ```js block after <!-- example:sdk -->');
  return match[1];
}

async function freePort() {
  const server = createServer();
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

async function waitForRelay(url, relay) {
  for (let i = 0; i < 150; i++) {
    if (relay.exitCode !== null) throw new Error(`relay exited with ${relay.exitCode}`);
    try {
      await fetch(`${url}/v1/auth/me`);
      return;
    } catch {
      await sleep(200);
    }
  }
  throw new Error('relay did not start within 30 s');
}

let relay;
try {
  run(npm, ['run', 'build'], repo);

  run(npm, ['pack', '--pack-destination', work, '-w', '@chat/protocol', '-w', '@chat/signal-sdk'], repo);
  const tarballs = readdirSync(work).filter((f) => f.endsWith('.tgz')).map((f) => join(work, f));
  if (tarballs.length !== 2) throw new Error(`expected 2 tarballs, got ${tarballs.join(', ')}`);

  const app = join(work, 'app');
  run('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'pack-check-app', private: true, type: 'module' }));
  run(npm, ['install', '--no-audit', '--no-fund', ...tarballs], app);
  writeFileSync(join(app, 'example.js'), readmeExample(readFileSync(join(repo, 'README.md'), 'utf8')));

  const port = await freePort();
  const relayUrl = `http://127.0.0.1:${port}`;
  relay = spawn(process.execPath, ['apps/relay/dist/main.js'], {
    cwd: repo,
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', DATA_DIR: join(work, 'relay-data'), NODE_ENV: 'development' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await waitForRelay(relayUrl, relay);

  const output = execFileSync(process.execPath, ['example.js'], {
    cwd: app,
    env: { ...process.env, RELAY_URL: relayUrl },
    encoding: 'utf8',
    timeout: 60_000,
  });
  process.stdout.write(output);
  if (!/Hello, Bob!/.test(output)) throw new Error('the README example did not print the message Bob received');
  console.log('pack-check: the packed SDK ran the README example against the relay');
} finally {
  relay?.kill('SIGTERM');
  rmSync(work, { recursive: true, force: true });
}
