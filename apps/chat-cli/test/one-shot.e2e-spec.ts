// The scriptable commands of the built CLI (apps/chat-cli/dist/main.js) as
// child processes against the built relay: register, send, inbox --json,
// and the one-line failures a person can cause, with their exit codes.
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { execFile } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SqliteStores } from '@chat/signal-sdk/sqlite';
import { freeLoopbackPort, startRelay, type TestRelayProcess } from '@chat/relay-harness';

// Each run starts Node and derives the store key (scrypt): about a second or two.
jest.setTimeout(60_000);

const CLI_MAIN = resolve(dirname(fileURLToPath(import.meta.url)), '../dist/main.js');
const PASSPHRASE = 'a passphrase for the e2e test';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let relay: TestRelayProcess;
let home: string;

/** Runs the CLI to its end; never rejects (the exit code is part of the answer). */
function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  return new Promise((resolveRun) => {
    execFile(
      process.execPath,
      [CLI_MAIN, ...args],
      {
        env: { PATH: process.env.PATH, HOME: home, CHAT_CLI_HOME: home, CHAT_RELAY_URL: relay.url, CHAT_CLI_PASSPHRASE: PASSPHRASE, ...env },
        timeout: 60_000,
      },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolveRun({ code, stdout, stderr });
      },
    );
  });
}

const exists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

beforeAll(async () => {
  relay = await startRelay();
  home = await mkdtemp(join(tmpdir(), 'chat-cli-one-shot-'));
  for (const username of ['alice', 'bob']) {
    const registered = await cli(['register', username, '--no-chat']);
    expect(registered).toEqual({ code: 0, stdout: '', stderr: `registered ${username} (device 1) at ${relay.url}\n` });
  }
}, 120_000);

afterAll(async () => {
  await relay?.close();
  if (home) await rm(home, { recursive: true, force: true });
});

describe('chat-cli one-shot commands', () => {
  it('sends a message with send and takes it with inbox --json, once', async () => {
    const sent = await cli(['send', '--as', 'alice', 'bob', 'hello', 'bob,', 'from', 'a', 'script']);
    expect(sent.code).toBe(0);
    expect(sent.stdout).toMatch(/^sent [0-9a-f-]{36}\n$/);

    const inbox = await cli(['inbox', '--as', 'bob', '--json']);
    expect(inbox.code).toBe(0);
    const messages = JSON.parse(inbox.stdout) as Array<Record<string, unknown>>;
    expect(messages).toEqual([
      { id: expect.any(String), conversation: 'alice', from: 'alice', text: 'hello bob, from a script', timestamp: expect.any(Number) },
    ]);

    // Taken: the relay deleted it once the CLI kept it.
    expect(JSON.parse((await cli(['inbox', '--as', 'bob', '--json'])).stdout)).toEqual([]);
  });

  it('prints inbox messages as lines without --json', async () => {
    expect((await cli(['send', '--as', 'bob', 'alice', 'hi alice'])).code).toBe(0);
    const inbox = await cli(['inbox', '--as', 'alice']);
    expect(inbox.code).toBe(0);
    expect(inbox.stdout).toMatch(/^\S+Z bob: hi alice\n$/);
  });

  it('says there is no such user, exit 1', async () => {
    const run = await cli(['send', '--as', 'alice', 'nobody_here', 'hi']);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('chat-cli: there is no user named nobody_here [UNKNOWN_RECIPIENT]\n');
  });

  it('says the passphrase is wrong, exit 1', async () => {
    const run = await cli(['inbox', '--as', 'bob'], { CHAT_CLI_PASSPHRASE: 'not the passphrase' });
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('chat-cli: wrong passphrase for bob [WRONG_PASSPHRASE]\n');
  });

  it('says the relay cannot be reached when nothing listens at its URL, exit 1', async () => {
    const closed = `http://127.0.0.1:${await freeLoopbackPort()}`;
    const run = await cli(['send', '--as', 'alice', '--relay', closed, 'bob', 'hi']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(new RegExp(`^chat-cli: cannot reach the relay at ${closed.replaceAll('.', '\\.')}[^\\n]*\\n$`));
  });

  it('says the account is open in another chat-cli while its store is held, exit 1', async () => {
    const held = await SqliteStores.open({ path: join(home, 'bob.db'), passphrase: PASSPHRASE });
    try {
      // SQLite's exclusive lock is taken by the first write.
      await held.appRecords('e2e-hold').put('held', new Uint8Array([1]));
      const run = await cli(['inbox', '--as', 'bob']);
      expect(run.code).toBe(1);
      expect(run.stderr).toBe('chat-cli: bob is open in another chat-cli; close that one first [STORE_LOCKED]\n');
    } finally {
      await held.close();
    }
  });

  it('refuses a taken username and leaves no store behind, exit 1', async () => {
    const otherHome = await mkdtemp(join(tmpdir(), 'chat-cli-one-shot-other-'));
    try {
      const run = await cli(['register', 'alice', '--no-chat'], { CHAT_CLI_HOME: otherHome });
      expect(run.code).toBe(1);
      expect(run.stderr).toBe('chat-cli: the username alice is taken; choose another [USERNAME_TAKEN]\n');
      expect(await exists(join(otherHome, 'alice.db'))).toBe(false);
    } finally {
      await rm(otherHome, { recursive: true, force: true });
    }
  });

  it('exits 2 on bad usage, with no stack trace', async () => {
    const missing = await cli(['send', '--as', 'alice']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('chat-cli send <to> <message...>');
    const unknownOption = await cli(['inbox', '--bogus']);
    expect(unknownOption.code).toBe(2);
    expect(unknownOption.stderr).toContain("unknown option '--bogus'");
    expect(unknownOption.stderr + missing.stderr).not.toMatch(/\n\s+at /);
  });
});
